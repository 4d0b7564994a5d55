-- The quickstart's schema. Run by the `migrate` job against the environment's own database
-- (psql reads the connection from the PG* variables the stack sets); safe to run again.
CREATE TABLE IF NOT EXISTS visits (
    id         bigserial PRIMARY KEY,
    visited_at timestamptz NOT NULL DEFAULT now()
);
