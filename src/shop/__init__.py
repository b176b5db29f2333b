"""shop: the reference commerce system built on grpckit."""
