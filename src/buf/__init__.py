"""Generated: ``buf.validate.validate_pb2`` for google.protobuf (do not edit).

buf/validate/validate.proto is protovalidate's schema, normally fetched from buf.build (which
cannot be reached here). scripts/generate.py generates this module from the descriptor that the
pinned ``protovalidate`` package embeds; the shop's ``_pb2`` modules import it.
"""
