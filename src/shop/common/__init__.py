"""What every shop service shares: money, ids, paging, databases, the outbox, the event bus."""
