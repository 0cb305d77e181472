-- Status reports providers posted to their webhooks, one row per report
-- (its receipt: the provider's token, or a digest of what it signed), so a
-- replayed report is refused and changes nothing.
CREATE TABLE webhook_receipts (
    provider    TEXT NOT NULL,
    receipt     TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (provider, receipt)
);
