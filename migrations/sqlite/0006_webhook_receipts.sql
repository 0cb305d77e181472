-- See migrations/postgres/0006_webhook_receipts.sql.
CREATE TABLE webhook_receipts (
    provider    TEXT NOT NULL,
    receipt     TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (provider, receipt)
);
