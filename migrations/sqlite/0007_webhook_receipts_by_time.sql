-- See migrations/postgres/0007_webhook_receipts_by_time.sql.
CREATE INDEX webhook_receipts_by_time ON webhook_receipts (received_at);
