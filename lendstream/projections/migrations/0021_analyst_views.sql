-- Issue 7: views for analysts' common questions (docs/analysts.md). Applied inside the
-- configured schema. Re-runnable (CREATE OR REPLACE): a view is bound to the tables it reads,
-- so whatever swaps a table for a rebuilt one re-runs this file in the same transaction
-- (`lendstream.analysts.recreate_views`). SELECT for lendstream_reader comes from the
-- schema's default privileges (0020).

-- Loans and money by status and currency (from loan_summary).
CREATE OR REPLACE VIEW portfolio_by_status AS
SELECT status,
       currency,
       count(*)                                  AS loans,
       sum(applied_amount_cents)                 AS applied_cents,
       coalesce(sum(approved_amount_cents), 0)   AS approved_cents,
       coalesce(sum(total_due_cents), 0)         AS total_due_cents,
       sum(repaid_cents)                         AS repaid_cents,
       sum(outstanding_cents)                    AS outstanding_cents,
       max(updated_at)                           AS last_change_at
  FROM loan_summary
 GROUP BY status, currency;

-- Applied repayments per calendar month (UTC, event time) and currency (from event_log,
-- which holds every applied event once: no duplicates, no dead letters).
CREATE OR REPLACE VIEW repayments_by_month AS
SELECT date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date AS month,
       data ->> 'currency'                                  AS currency,
       count(*)                                             AS repayments,
       count(DISTINCT loan_id)                              AS loans,
       sum((data ->> 'amount_cents')::bigint)               AS amount_cents
  FROM event_log
 WHERE type = 'RepaymentReceived'
 GROUP BY 1, 2;

-- Each partner's credit line and how much of it is in use (from partner_credit).
CREATE OR REPLACE VIEW partner_utilisation AS
SELECT partner_id,
       currency,
       limit_cents,
       in_use_cents,
       limit_cents - in_use_cents                                   AS available_cents,
       CASE WHEN limit_cents > 0
            THEN round(in_use_cents::numeric / limit_cents, 4) END  AS utilisation,
       updated_at
  FROM partner_credit;
