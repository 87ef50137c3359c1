"""The SQL of the ledger's rollup (``cascade.ledger.rollup``): its tables, the triggers that keep
it, and the backfill of an upgrade, written once for SQLite and PostgreSQL.

Each trigger appends a delta row to ``rollup_log`` for every ``steps``, ``runs`` or ``feedback``
row written or changed; see ``cascade.ledger.rollup`` for what the columns count.
"""

from __future__ import annotations

from cascade.ledger.backends import Backend, Tx

__all__ = [
    "FEEDBACK_METRICS", "KEY", "METRICS", "MONDAY_S", "SCHEMA_9_METRICS", "STEP_METRICS",
    "TOP_METRICS", "WEEK_S", "RollupSql",
    "add_top_rollup", "create_rollup",
]

WEEK_S = 604800
MONDAY_S = 259200  # 1970-01-01 was a Thursday: weeks start 3 days before the epoch

STEP_METRICS = (
    "steps", "calls", "answers", "accepted", "errors", "shadow_calls", "shadow_nusd",
    "cost_nusd", "input_tokens", "output_tokens", "estimated", "unfinished",
)
_RUN_METRICS = ("runs", "runs_accepted", "run_nusd")
_SCORE_METRICS = ("score_nano", "scores_user", "scores_shadow")
# What always-top would have cost (schema 8, ``runs.top_usd``), kept by triggers of their own
# so that the upgrade adds them beside the schema-6 triggers without rewriting those: runs with
# a figure, the figure, those runs' own cost, and how many figures are exact (the top rung ran).
TOP_METRICS = ("top_runs", "top_nusd", "top_cost_nusd", "top_exact")
# Every feedback row of the runs (schema 8 too), by the run's task, model and week: users'
# scores and shadow labels apart (``cascade report``'s feedback mean and shadow agreement).
FEEDBACK_METRICS = ("user_nano", "user_scores", "shadow_nano", "shadow_scores")
SCHEMA_9_METRICS = (*TOP_METRICS, *FEEDBACK_METRICS)
METRICS = (
    *STEP_METRICS, "step_runs", "escalated_runs", *_RUN_METRICS, *_SCORE_METRICS,
    *SCHEMA_9_METRICS,
)
_SHADOW = "'shadow:agreement'"  # cascade.engine.shadow.SOURCE

KEY = "task, model, week"
_ESCALATING = "('escalate', 'error', 'skip')"  # as cascade report counts an escalation


class RollupSql:
    """The rollup's SQL in one dialect (``sqlite`` or ``postgres``)."""

    def __init__(self, dialect: str):
        self.sqlite = dialect == "sqlite"
        self.int = "INTEGER" if self.sqlite else "BIGINT"

    def week(self, ts: str) -> str:
        if self.sqlite:  # CAST truncates: the same as floor for times after 1970
            return f"CAST(({ts} + {MONDAY_S}) / {WEEK_S} AS INTEGER)"
        return f"CAST(floor(({ts} + {MONDAY_S}) / {WEEK_S}) AS BIGINT)"

    def nano(self, value: str) -> str:
        return f"CAST(ROUND(({value}) * 1e9) AS {self.int})"

    def step_values(self, row: str) -> list[str]:
        """What one step row adds to each of STEP_METRICS."""

        def when(condition: str, then: str = "1") -> str:
            return f"CASE WHEN {condition} THEN {then} ELSE 0 END"

        return [
            "1",
            when(f"{row}.decision NOT IN ('skip', 'cache')"),
            when(f"{row}.decision IN ('accept', 'escalate')"),
            when(f"{row}.decision = 'accept'"),
            when(f"{row}.decision = 'error'"),
            when(f"{row}.decision = 'shadow'"),
            when(f"{row}.decision = 'shadow'", self.nano(f"{row}.cost_usd")),
            self.nano(f"{row}.cost_usd"),
            f"{row}.input_tokens",
            f"{row}.output_tokens",
            f"{row}.usage_estimated",
            when(f"{row}.status <> 'settled'"),
        ]

    @staticmethod
    def sibling(row: str, escalating: bool = False) -> str:
        """Another step of the same run and task already in the rollup (escalating, if asked).

        ``task || ''`` keeps the task out of the index choice: without statistics (a new
        ledger; SQLite never gathers any) both planners would otherwise walk every step of the
        task through ``steps_task_ts``, a cost growing with the ledger at every settlement,
        where ``steps_run`` finds the run's few steps.
        """
        extra = f" AND o.decision IN {_ESCALATING}" if escalating else ""
        return (f"EXISTS (SELECT 1 FROM steps o WHERE o.run_id = {row}.run_id AND o.task || ''"
                f" = {row}.task AND o.id <> {row}.id AND o.status <> 'pending'{extra})")

    @staticmethod
    def escalating(row: str) -> str:
        return (f"CASE WHEN {row}.status <> 'pending' AND {row}.decision IN {_ESCALATING}"
                " THEN 1 ELSE 0 END")

    @staticmethod
    def latest(run_id: str, user: bool, skip: str = "") -> str:
        """The latest score of a run from users (or from shadows), leaving out row ``skip``."""
        source = "source = 'user'" if user else "source <> 'user'"
        without = f" AND id <> {skip}" if skip else ""
        return (f"(SELECT score FROM feedback WHERE run_id = {run_id} AND {source}{without}"
                " ORDER BY ts DESC, id DESC LIMIT 1)")

    def score(self, user: str, shadow: str, gate: str = "1 = 1") -> list[str]:
        """score_nano, scores_user, scores_shadow of a run whose latest scores are these."""
        both = f"COALESCE({user}, {shadow})"
        return [
            f"CASE WHEN {gate} AND {both} IS NOT NULL THEN {self.nano(both)} ELSE 0 END",
            f"CASE WHEN {gate} AND {user} IS NOT NULL THEN 1 ELSE 0 END",
            f"CASE WHEN {gate} AND {user} IS NULL AND {shadow} IS NOT NULL THEN 1 ELSE 0 END",
        ]

    def run_values(self, row: str, sign: str) -> str:
        """The log row of a runs row (``sign``: ``-`` to take an old version back out)."""
        gate = f"{row}.accepted <> 0 AND {row}.model IS NOT NULL"
        values = ["1", f"CASE WHEN {row}.accepted <> 0 THEN 1 ELSE 0 END",
                  self.nano(f"{row}.cost_usd"), *self.score("f.u", "f.s", gate)]
        return (
            f"INSERT INTO rollup_log ({KEY}, {', '.join((*_RUN_METRICS, *_SCORE_METRICS))})"
            f" SELECT {row}.task, COALESCE({row}.model, ''), {self.week(f'{row}.ts')}, "
            + ", ".join(f"{sign}({v})" for v in values)
            + f" FROM (SELECT {self.latest(f'{row}.run_id', True)} AS u,"
            f" {self.latest(f'{row}.run_id', False)} AS s) f WHERE 1 = 1"
        )

    def triggers(self) -> dict[tuple[str, str], list[str]]:
        """(table, event) -> the statements its trigger runs for each row (see ``WHEN``)."""
        steps = f"{KEY}, {', '.join(STEP_METRICS)}"
        first = f"CASE WHEN {self.sibling('NEW')} THEN 0 ELSE 1 END"
        first_escalating = (f"CASE WHEN NEW.decision NOT IN {_ESCALATING} THEN 0"
                            f" WHEN {self.sibling('NEW', True)} THEN 0 ELSE 1 END")
        key = {row: f"{row}.task, {row}.model, {self.week(f'{row}.ts')}" for row in ("NEW", "OLD")}
        new = ", ".join(self.step_values("NEW"))
        old = ", ".join(f"-({v})" for v in self.step_values("OLD"))
        esc_new, esc_old = self.escalating("NEW"), self.escalating("OLD")
        return {
            ("steps", "INSERT"): [
                f"INSERT INTO rollup_log ({steps}, step_runs, escalated_runs) SELECT {key['NEW']},"
                f" {new}, {first}, {first_escalating} WHERE NEW.status <> 'pending'",
            ],
            ("steps", "UPDATE"): [
                f"INSERT INTO rollup_log ({steps}) SELECT {key['OLD']}, {old}"
                " WHERE OLD.status <> 'pending'",
                f"INSERT INTO rollup_log ({steps}, step_runs, escalated_runs) SELECT {key['NEW']},"
                f" {new}, CASE WHEN OLD.status <> 'pending' THEN 0 WHEN {self.sibling('NEW')}"
                f" THEN 0 ELSE 1 END, CASE WHEN {esc_new} = {esc_old} THEN 0"
                f" WHEN {self.sibling('NEW', True)} THEN 0 ELSE {esc_new} - {esc_old} END"
                " WHERE NEW.status <> 'pending'",
                # back to pending (the ledger never does it): take the row's runs back out
                f"INSERT INTO rollup_log ({KEY}, step_runs, escalated_runs) SELECT {key['OLD']},"
                f" CASE WHEN {self.sibling('OLD')} THEN 0 ELSE -1 END,"
                f" CASE WHEN {esc_old} = 0 THEN 0 WHEN {self.sibling('OLD', True)} THEN 0"
                " ELSE -1 END WHERE NEW.status = 'pending' AND OLD.status <> 'pending'",
            ],
            ("runs", "INSERT"): [self.run_values("NEW", "")],
            ("runs", "UPDATE"): [self.run_values("OLD", "-"), self.run_values("NEW", "")],
            ("feedback", "INSERT"): [
                f"INSERT INTO rollup_log ({KEY}, {', '.join(_SCORE_METRICS)}) SELECT r.task,"
                f" r.model, {self.week('r.ts')}, "
                + ", ".join(f"({a}) - ({b})" for a, b in zip(
                    self.score("f.u1", "f.s1"), self.score("f.u0", "f.s0"), strict=True))
                + f" FROM runs r, (SELECT {self.latest('NEW.run_id', True)} AS u1,"
                f" {self.latest('NEW.run_id', False)} AS s1,"
                f" {self.latest('NEW.run_id', True, 'NEW.id')} AS u0,"
                f" {self.latest('NEW.run_id', False, 'NEW.id')} AS s0) f"
                " WHERE r.run_id = NEW.run_id AND r.accepted <> 0 AND r.model IS NOT NULL",
            ],
        }

    def top_values(self, row: str) -> list[str]:
        """What a runs row adds to each of TOP_METRICS (nothing when it has no figure)."""
        has = f"{row}.top_usd IS NOT NULL"
        return [
            f"CASE WHEN {has} THEN 1 ELSE 0 END",
            f"CASE WHEN {has} THEN {self.nano(f'{row}.top_usd')} ELSE 0 END",
            f"CASE WHEN {has} THEN {self.nano(f'{row}.cost_usd')} ELSE 0 END",
            f"CASE WHEN {has} AND {row}.top_estimated = 0 THEN 1 ELSE 0 END",
        ]

    def top_row(self, row: str, sign: str) -> str:
        return (
            f"INSERT INTO rollup_log ({KEY}, {', '.join(TOP_METRICS)}) SELECT {row}.task,"
            f" COALESCE({row}.model, ''), {self.week(f'{row}.ts')}, "
            + ", ".join(f"{sign}({v})" for v in self.top_values(row))
            + f" WHERE {row}.top_usd IS NOT NULL"
        )

    def feedback_values(self, row: str) -> list[str]:
        """What a feedback row adds to each of FEEDBACK_METRICS."""
        user, shadow = f"{row}.source = 'user'", f"{row}.source = {_SHADOW}"
        return [f"CASE WHEN {user} THEN {self.nano(f'{row}.score')} ELSE 0 END",
                f"CASE WHEN {user} THEN 1 ELSE 0 END",
                f"CASE WHEN {shadow} THEN {self.nano(f'{row}.score')} ELSE 0 END",
                f"CASE WHEN {shadow} THEN 1 ELSE 0 END"]

    def run_feedback(self, row: str, sign: str) -> str:
        """A runs row's feedback so far, under its key (feedback may come before its run)."""
        sums = ", ".join(f"{sign}(SUM({v}))" for v in self.feedback_values("f"))
        return (
            f"INSERT INTO rollup_log ({KEY}, {', '.join(FEEDBACK_METRICS)}) SELECT {row}.task,"
            f" COALESCE({row}.model, ''), {self.week(f'{row}.ts')}, {sums} FROM feedback f"
            f" WHERE f.run_id = {row}.run_id HAVING COUNT(*) > 0"
        )

    def top_triggers(self) -> dict[tuple[str, str], list[str]]:
        feedback = ", ".join(self.feedback_values("NEW"))
        return {
            ("runs", "INSERT"): [self.top_row("NEW", ""), self.run_feedback("NEW", "")],
            ("runs", "UPDATE"): [self.top_row("OLD", "-"), self.top_row("NEW", ""),
                                 self.run_feedback("OLD", "-"), self.run_feedback("NEW", "")],
            ("feedback", "INSERT"): [
                f"INSERT INTO rollup_log ({KEY}, {', '.join(FEEDBACK_METRICS)}) SELECT r.task,"
                f" COALESCE(r.model, ''), {self.week('r.ts')}, {feedback} FROM runs r"
                " WHERE r.run_id = NEW.run_id"
            ],
        }

    def top_backfill(self) -> list[str]:
        """SCHEMA_9_METRICS of the rows already there (an upgrade from before schema 8 finds
        no run with a figure, but feedback)."""
        sums = ", ".join(f"SUM({v})" for v in self.top_values("runs"))
        feedback = ", ".join(f"SUM({v})" for v in self.feedback_values("f"))
        return [
            f"INSERT INTO rollup ({KEY}, {', '.join(TOP_METRICS)}) SELECT task,"
            f" COALESCE(model, ''), {self.week('ts')}, {sums} FROM runs"
            " WHERE top_usd IS NOT NULL GROUP BY 1, 2, 3" + self.upsert(TOP_METRICS),
            f"INSERT INTO rollup ({KEY}, {', '.join(FEEDBACK_METRICS)}) SELECT r.task,"
            f" COALESCE(r.model, ''), {self.week('r.ts')}, {feedback} FROM feedback f"
            " JOIN runs r ON r.run_id = f.run_id GROUP BY 1, 2, 3"
            + self.upsert(FEEDBACK_METRICS),
        ]

    def upsert(self, columns: tuple[str, ...]) -> str:
        sets = ", ".join(f"{c} = rollup.{c} + excluded.{c}" for c in columns)
        return f" ON CONFLICT ({KEY}) DO UPDATE SET {sets}"

    def backfill(self) -> list[str]:
        """The rollup of the rows already there (an upgrade), one pass per part."""
        week = self.week("ts")
        values = ", ".join(f"SUM({v})" for v in self.step_values("steps"))
        first = "SELECT MIN(id) FROM steps WHERE status <> 'pending'{} GROUP BY run_id, task"
        escalating = f" AND decision IN {_ESCALATING}"
        runs = [
            "CASE WHEN r.accepted <> 0 THEN 1 ELSE 0 END", self.nano("r.cost_usd"),
            *self.score("l.u", "l.s", "r.accepted <> 0 AND r.model IS NOT NULL"),
        ]
        run_columns = (*_RUN_METRICS, *_SCORE_METRICS)
        return [
            f"INSERT INTO rollup ({KEY}, {', '.join(STEP_METRICS)}) SELECT task, model, {week},"
            f" {values} FROM steps WHERE status <> 'pending' GROUP BY 1, 2, 3",
            *(
                f"INSERT INTO rollup ({KEY}, {column}) SELECT task, model, {week}, COUNT(*)"
                f" FROM steps WHERE id IN ({first.format(extra)}) GROUP BY 1, 2, 3"
                + self.upsert((column,))
                for column, extra in (("step_runs", ""), ("escalated_runs", escalating))
            ),
            # The latest user score and the latest shadow score of each run, in one pass.
            "WITH ranked AS (SELECT run_id, score, CASE WHEN source = 'user' THEN 1 ELSE 0 END"
            " AS by_user, ROW_NUMBER() OVER (PARTITION BY run_id, CASE WHEN source = 'user'"
            " THEN 1 ELSE 0 END ORDER BY ts DESC, id DESC) AS n FROM feedback),"
            " latest AS (SELECT run_id, MAX(CASE WHEN by_user = 1 THEN score END) AS u,"
            " MAX(CASE WHEN by_user = 0 THEN score END) AS s FROM ranked WHERE n = 1"
            " GROUP BY run_id)"
            f" INSERT INTO rollup ({KEY}, {', '.join(run_columns)}) SELECT r.task,"
            f" COALESCE(r.model, ''), {self.week('r.ts')}, COUNT(*), "
            + ", ".join(f"SUM({v})" for v in runs)
            + " FROM runs r LEFT JOIN latest l ON l.run_id = r.run_id WHERE 1 = 1"
            " GROUP BY 1, 2, 3" + self.upsert(run_columns),
        ]


# Rows for which a trigger runs at all: a reservation's pending row is not in the rollup, so
# writing it costs nothing more than before (the trigger is not even called).
_WHEN = {
    ("steps", "INSERT"): "NEW.status <> 'pending'",
    ("steps", "UPDATE"): "OLD.status <> 'pending' OR NEW.status <> 'pending'",
}


def create_rollup(backend: Backend, tx: Tx, types: dict[str, str]) -> None:
    """Create the rollup, its log and their triggers, and fill the rollup from the rows already
    in the ledger (an upgrade; nothing to fill in a new ledger)."""
    sql = RollupSql(backend.name)
    columns = ", ".join(f"{c} {types['int']} NOT NULL DEFAULT 0" for c in METRICS)
    tx.execute(f"CREATE TABLE rollup (task TEXT NOT NULL, model TEXT NOT NULL, week {types['int']}"
               f" NOT NULL, {columns}, PRIMARY KEY ({KEY}))")
    tx.execute(f"CREATE TABLE rollup_log (id {types['id']}, task TEXT NOT NULL, model TEXT NOT"
               f" NULL, week {types['int']} NOT NULL, {columns})")
    for statement in (*sql.backfill(), *sql.top_backfill()):
        tx.execute(statement)
    _create_triggers(sql, tx, sql.triggers(), "rollup")
    _create_triggers(sql, tx, sql.top_triggers(), "rollup_top")


def add_top_rollup(backend: Backend, tx: Tx, types: dict[str, str]) -> None:
    """Schema 8 on a rollup made before it: SCHEMA_9_METRICS columns in ``rollup`` and its log,
    their triggers, and the sums of the rows already there."""
    sql = RollupSql(backend.name)
    for table in ("rollup", "rollup_log"):
        for column in SCHEMA_9_METRICS:
            tx.execute(f"ALTER TABLE {table} ADD COLUMN {column} {types['int']} NOT NULL DEFAULT 0")
    for statement in sql.top_backfill():
        tx.execute(statement)
    _create_triggers(sql, tx, sql.top_triggers(), "rollup_top")


def _create_triggers(
    sql: RollupSql, tx: Tx, triggers: dict[tuple[str, str], list[str]], prefix: str
) -> None:
    for (table, event), statements in triggers.items():
        name = f"{prefix}_{table}_{event.lower()}"
        body = "".join(f" {s};" for s in statements)
        when = f" WHEN ({_WHEN[table, event]})" if (table, event) in _WHEN else ""
        if sql.sqlite:
            tx.execute(f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW{when}"
                       f" BEGIN{body} END")
        else:
            tx.execute(f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS"
                       f" $body$ BEGIN{body} RETURN NULL; END $body$")
            tx.execute(f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW{when}"
                       f" EXECUTE FUNCTION {name}()")


