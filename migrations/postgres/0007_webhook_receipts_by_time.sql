-- Receipts older than two days are deleted as reports arrive: by time.
CREATE INDEX webhook_receipts_by_time ON webhook_receipts (received_at);
