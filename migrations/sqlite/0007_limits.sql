-- Issue 8 (engineer D): key rows are written back only if unchanged since
-- they were read (optimistic concurrency), so two concurrent changes of one
-- key (memo and rotation period, say) both persist. Every write of the
-- columns `update_key` sets bumps the revision.
ALTER TABLE keys ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
