"""The rate limiter itself: GCRA on Redis (one Lua script per request) and in process.

Several ``RedisLimiter`` instances on one Redis stand for gateway replicas. Clocks are injected
(the script takes the time as an argument then), so the counts are exact; the Redis clock
(``TIME``) path is checked with limits that cannot refill within the test.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from cascade.config import RedisLimiterConfig
from cascade.gateway.ratelimit import LocalLimiter, RateLimiter, RedisLimiter, Scope
from tests.redis_server import URL_ENV, redis_prefix  # noqa: F401  (fixture)


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rpm(name: str, limit: int) -> Scope:
    return Scope(f"key:{name}:rpm", limit, 1, f"key {name!r} rpm {limit}", "requests")


def tpm(name: str, limit: int, cost: int) -> Scope:
    return Scope(f"key:{name}:tpm", limit, cost, f"key {name!r} tpm {limit}", "tokens")


Make = Callable[[Clock | None], RateLimiter]


@pytest.fixture(params=["redis", "local"])
def make(request: pytest.FixtureRequest, redis_prefix: str) -> Make:  # noqa: F811
    """Limiters that share state, as replicas do: on one Redis, or one local limiter."""
    if request.param == "local":
        shared: dict[int, LocalLimiter] = {}

        def local(clock: Clock | None) -> RateLimiter:
            key = id(clock)
            if key not in shared:
                shared[key] = LocalLimiter(clock=clock) if clock else LocalLimiter()
            return shared[key]

        return local
    config = RedisLimiterConfig(url_env=URL_ENV, prefix=redis_prefix)
    return lambda clock: RedisLimiter(config, clock=clock)


async def close(*limiters: RateLimiter) -> None:
    for limiter in set(limiters):
        await limiter.aclose()


def test_concurrent_requests_across_replicas_admit_exactly_the_limit(make: Make) -> None:
    """90 requests at once over 3 replicas against rpm 25 with the clock frozen: 25 admitted."""
    clock = Clock()

    async def main() -> int:
        replicas = [make(clock) for _ in range(3)]
        answers = await asyncio.gather(*(replicas[i % 3].take([rpm("a", 25)]) for i in range(90)))
        await close(*replicas)
        return sum(a.admitted for a in answers)

    assert asyncio.run(main()) == 25


def test_the_bucket_refills_one_unit_per_step(make: Make) -> None:
    """rpm 60: a full burst, then one more request per second of the (injected) clock."""
    clock = Clock()

    async def main() -> list[bool]:
        limiter = make(clock)
        seen = [(await limiter.take([rpm("a", 60)])).admitted for _ in range(61)]
        clock.now += 0.999
        seen.append((await limiter.take([rpm("a", 60)])).admitted)
        clock.now += 0.001
        seen += [(await limiter.take([rpm("a", 60)])).admitted for _ in range(2)]
        await close(limiter)
        return seen

    seen = asyncio.run(main())
    assert seen == [True] * 60 + [False, False, True, False]


def test_a_refusal_reports_when_to_retry_and_what_remains(make: Make) -> None:
    """After 4 of rpm 4, the wait is one step (15 s) and nothing remains; 1 s later, 14 s."""
    clock = Clock()

    async def main() -> tuple[float, float, int, float]:
        limiter = make(clock)
        for _ in range(4):
            await limiter.take([rpm("a", 4)])
        refused = await limiter.take([rpm("a", 4)])
        clock.now += 1
        later = await limiter.take([rpm("a", 4)])
        await close(limiter)
        return (
            refused.retry_after_s,
            later.retry_after_s,
            later.remaining(rpm("a", 4), 0),
            (refused.ahead_s[0]),
        )

    wait, later, remaining, ahead = asyncio.run(main())
    assert (wait, later, remaining, ahead) == (15.0, 14.0, 0, 60.0)


def test_a_refusal_by_one_scope_takes_from_none(make: Make) -> None:
    """The tpm scope refuses: the rpm scope checked in the same call is not taken from."""
    clock = Clock()

    async def main() -> list[bool]:
        limiter = make(clock)
        first = await limiter.take([rpm("a", 2), tpm("a", 100, 90)])
        refused = await limiter.take([rpm("a", 2), tpm("a", 100, 20)])
        # rpm 2 still has one request left: the refused one took nothing.
        fits = await limiter.take([rpm("a", 2), tpm("a", 100, 10)])
        full = await limiter.take([rpm("a", 2)])
        await close(limiter)
        return [first.admitted, refused.admitted, fits.admitted, full.admitted]

    assert asyncio.run(main()) == [True, False, True, False]


def test_keys_do_not_share_a_bucket(make: Make) -> None:
    """Key b is admitted while key a is refused."""
    clock = Clock()

    async def main() -> list[bool]:
        limiter = make(clock)
        out = [(await limiter.take([rpm("a", 1)])).admitted for _ in range(2)]
        out.append((await limiter.take([rpm("b", 1)])).admitted)
        await close(limiter)
        return out

    assert asyncio.run(main()) == [True, False, True]


def test_settling_refunds_the_unused_reservation(make: Make) -> None:
    """tpm 100: 80 reserved, 10 used (settle -70): 90 more fit, 91 do not."""
    clock = Clock()

    async def main() -> list[bool]:
        limiter = make(clock)
        out = [(await limiter.take([tpm("a", 100, 80)])).admitted]
        await limiter.settle([tpm("a", 100, -70)])
        out.append((await limiter.take([tpm("a", 100, 91)])).admitted)
        out.append((await limiter.take([tpm("a", 100, 90)])).admitted)
        out.append((await limiter.take([tpm("a", 100, 1)])).admitted)
        await close(limiter)
        return out

    assert asyncio.run(main()) == [True, False, True, False]


def test_a_refund_never_goes_below_an_empty_bucket(make: Make) -> None:
    """A refund larger than what is held leaves an empty bucket, not credit beyond the limit."""
    clock = Clock()

    async def main() -> list[bool]:
        limiter = make(clock)
        await limiter.take([tpm("a", 100, 10)])
        await limiter.settle([tpm("a", 100, -1000)])
        out = [(await limiter.take([tpm("a", 100, 100)])).admitted]
        out.append((await limiter.take([tpm("a", 100, 1)])).admitted)
        await close(limiter)
        return out

    assert asyncio.run(main()) == [True, False]


def test_settling_charges_usage_above_the_reservation(make: Make) -> None:
    """Used more than reserved (a judge's calls): the excess is taken, without a check."""
    clock = Clock()

    async def main() -> list[bool]:
        limiter = make(clock)
        await limiter.take([tpm("a", 100, 50)])
        await limiter.settle([tpm("a", 100, 30)])  # 80 in use now
        out = [(await limiter.take([tpm("a", 100, 21)])).admitted]
        out.append((await limiter.take([tpm("a", 100, 20)])).admitted)
        await close(limiter)
        return out

    assert asyncio.run(main()) == [False, True]


def test_redis_clock_holds_the_limit_across_replicas(redis_prefix: str) -> None:  # noqa: F811
    """On Redis's own clock (no injected one), 3 replicas admit 5 of 40 against rpm 5."""
    config = RedisLimiterConfig(url_env=URL_ENV, prefix=redis_prefix)

    async def main() -> int:
        replicas = [RedisLimiter(config) for _ in range(3)]
        answers = await asyncio.gather(*(replicas[i % 3].take([rpm("a", 5)]) for i in range(40)))
        await close(*replicas)
        return sum(a.admitted for a in answers)

    # A unit refills every 12 s: the 40 calls would have to take that long to see a sixth.
    assert asyncio.run(main()) == 5


def test_the_script_and_the_local_limiter_agree(redis_prefix: str) -> None:  # noqa: F811
    """300 random takes and settles over 3 scopes give the same answers from both."""
    rng = random.Random(7)
    clock = Clock()
    config = RedisLimiterConfig(url_env=URL_ENV, prefix=redis_prefix)
    limits = {"a": 7, "b": 100, "c": 1000}

    def scopes() -> list[Scope]:
        chosen = rng.sample(sorted(limits), rng.randint(1, 3))
        return [
            Scope(f"x:{n}", limits[n], rng.randint(-limits[n], limits[n]) // 2 + 1, n, "tokens")
            for n in chosen
        ]

    async def main() -> list[tuple[object, object]]:
        remote, local = RedisLimiter(config, clock=clock), LocalLimiter(clock=clock)
        pairs = []
        for _ in range(300):
            clock.now += rng.choice([0.0, 0.0, 0.5, 3.0, 20.0])
            chosen = scopes()
            if rng.random() < 0.2:
                await remote.settle(chosen)
                await local.settle(chosen)
                continue
            chosen = [Scope(s.key, s.limit, abs(s.cost), s.label, s.kind) for s in chosen]
            a, b = await remote.take(chosen), await local.take(chosen)
            pairs.append(
                (
                    (a.admitted, round(a.retry_after_s, 3), [round(x, 3) for x in a.ahead_s]),
                    (b.admitted, round(b.retry_after_s, 3), [round(x, 3) for x in b.ahead_s]),
                )
            )
        await remote.aclose()
        return pairs

    pairs = asyncio.run(main())
    assert [p[0] for p in pairs] == [p[1] for p in pairs]
    assert 0 < sum(p[0][0] for p in pairs) < len(pairs)  # both outcomes were exercised
