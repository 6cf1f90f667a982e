//! Group commit: gathers ingest writes from many connections into shared transactions.
