"""The package's HTTP policy: which answers are retried, how long to wait, which error a
failed answer becomes.

One :class:`RetryPolicy` type declares a caller's retries (attempts, exponential backoff
with jitter, the transient statuses, ``Retry-After``), after obstore's ``RetryConfig``
and urllib3's ``Retry``; the four callers are declared here, with their numbers:
:data:`ENGINE` (the async read engine's range requests), :data:`GDAL` (GDAL's reads,
retried whole), :data:`SEARCH` (STAC API requests) and :data:`LOGIN` (the request that
proves credentials). The requests-based callers (search, login) get a urllib3 ``Retry``
timed by their policy from :meth:`RetryPolicy.urllib3_retry`. :func:`error_for` is the one
status-to-exception map: 401/403 on a read become an
:class:`~xarray_terrascope.exceptions.AuthenticationError` saying what to check, other
statuses the caller's kind of error, the status kept as ``status_code``.

May import: :mod:`xarray_terrascope.config`, :mod:`xarray_terrascope.exceptions` (and
urllib3); the stages above use it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from itertools import takewhile
from typing import Any

from urllib3.util.retry import Retry

from xarray_terrascope import config
from xarray_terrascope.exceptions import (
    AuthenticationError,
    ReadError,
    SearchError,
    TerrascopeError,
)

__all__ = [
    "ENGINE",
    "GDAL",
    "LOGIN",
    "REFUSED",
    "REQUESTS_TRANSIENT",
    "SEARCH",
    "TRANSIENT",
    "PolicyRetry",
    "RetryPolicy",
    "error_for",
    "parse_retry_after",
]

#: Statuses worth another attempt on a read: timeouts, too early, too many requests, and
#: the server errors that pass (501 and 505 do not).
TRANSIENT = frozenset({408, 425, 429, 500, 502, 503, 504})
#: Statuses that refuse the request's credentials (or their absence).
REFUSED = frozenset({401, 403})


@dataclass(frozen=True)
class RetryPolicy:
    """How one kind of request is retried.

    The wait before retry ``attempt`` (0 for the first retry) is
    ``min(backoff_cap, backoff_base * 2**attempt)``, times a random factor in
    ``[1 - jitter, 1]``; at least the ``Retry-After`` the answer asked for, capped at
    ``retry_after_cap`` (see :meth:`delay`).

    Parameters
    ----------
    attempts : int
        Tries in all, the first one included (``attempts - 1`` retries).
    backoff_base : float
        Seconds: the first backoff, doubled for each further retry.
    backoff_cap : float
        Seconds: the longest backoff.
    jitter : float, default 0.5
        Fraction of each backoff that is random (0: none), so that clients that failed
        together do not come back together.
    transient : frozenset of int, default :data:`TRANSIENT`
        Statuses retried; any other failed status is final.
    retry_after_cap : float or None, default 60.0
        Seconds: the longest ``Retry-After`` honoured (a longer one is cut to this);
        None: any (urllib3's own limit, for :meth:`urllib3_retry`).
    first_retry_at_once : bool, default False
        Retry the first failure without waiting (urllib3's backoff does; the search and
        login policies keep that timing).

    Notes
    -----
    The read engine waits ``max(backoff, Retry-After)`` and pauses the host for the
    ``Retry-After`` (seconds only: an HTTP date falls back to the backoff). urllib3,
    for the requests-based callers, sleeps for a ``Retry-After`` of a 413/429/503 answer
    (seconds or an HTTP date, capped at ``retry_after_cap``) in place of the backoff.

    Examples
    --------
    >>> policy = RetryPolicy(attempts=4, backoff_base=0.5, backoff_cap=1.5, jitter=0.0)
    >>> [policy.delay(attempt) for attempt in range(policy.attempts - 1)]
    [0.5, 1.0, 1.5]
    >>> policy.delay(0, retry_after=3.0)
    3.0
    """

    attempts: int
    backoff_base: float
    backoff_cap: float
    jitter: float = 0.5
    transient: frozenset[int] = TRANSIENT
    retry_after_cap: float | None = 60.0
    first_retry_at_once: bool = False

    def __post_init__(self) -> None:
        if self.attempts < 1 or not 0.0 <= self.jitter <= 1.0:
            raise ValueError(
                f"RetryPolicy needs attempts >= 1 and 0 <= jitter <= 1, got {self.attempts} "
                f"and {self.jitter}"
            )

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry ``attempt`` (0 for the first), ``Retry-After``
        aside: exponential, capped, with jitter.

        Examples
        --------
        >>> LOGIN.backoff(0), LOGIN.backoff(1), LOGIN.backoff(2)
        (0.0, 0.5, 1.0)
        """
        if attempt == 0 and self.first_retry_at_once:
            return 0.0
        wait = min(self.backoff_cap, self.backoff_base * 2.0**attempt)
        if self.jitter:
            wait *= random.uniform(1.0 - self.jitter, 1.0)
        return wait

    def retry_after(self, value: str | None) -> float | None:
        """The pause a ``Retry-After`` header value asks for, in seconds, capped at
        :attr:`retry_after_cap`; None when there is none or it is an HTTP date.

        Examples
        --------
        >>> ENGINE.retry_after("2"), ENGINE.retry_after("86400"), ENGINE.retry_after(None)
        (2.0, 60.0, None)
        """
        seconds = parse_retry_after(value)
        if seconds is None or self.retry_after_cap is None:
            return seconds
        return min(seconds, self.retry_after_cap)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``attempt`` (0 for the first): the backoff, or
        longer when the answer asked for a longer ``retry_after`` (capped at
        :attr:`retry_after_cap`).

        Examples
        --------
        >>> SEARCH.delay(1), SEARCH.delay(1, retry_after=4.0)
        (1.0, 4.0)
        """
        wait = self.backoff(attempt)
        if retry_after:
            if self.retry_after_cap is not None:
                retry_after = min(retry_after, self.retry_after_cap)
            wait = max(wait, retry_after)
        return wait

    def urllib3_retry(self, kind: type[PolicyRetry] | None = None) -> PolicyRetry:
        """A urllib3 ``Retry`` (for requests' ``HTTPAdapter(max_retries=...)``) that
        retries as this policy says: ``attempts - 1`` retries of connection errors and
        of the :attr:`transient` statuses, any method (POST searches included), timed
        by :meth:`backoff`; the last answer is returned, not raised.

        Parameters
        ----------
        kind : type, optional
            A subclass of :class:`PolicyRetry` with rules of its own (the STAC search's).

        Examples
        --------
        >>> retry = LOGIN.urllib3_retry()
        >>> retry.total, sorted(retry.status_forcelist)
        (4, [429, 500, 502, 503, 504])
        """
        return (kind or PolicyRetry)(
            total=self.attempts - 1,
            status_forcelist=self.transient,
            allowed_methods=None,
            respect_retry_after_header=True,
            raise_on_status=False,
            policy=self,
        )


class PolicyRetry(Retry):
    """urllib3's ``Retry`` timed by a :class:`RetryPolicy`: its backoff and its cap on
    ``Retry-After`` are the policy's. Build it with :meth:`RetryPolicy.urllib3_retry`.
    """

    def __init__(self, *args: Any, policy: RetryPolicy | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.policy = policy

    def new(self, **kwargs: Any) -> PolicyRetry:
        # urllib3 makes a new Retry for each retry: it keeps the policy
        kwargs.setdefault("policy", self.policy)
        return super().new(**kwargs)

    def get_backoff_time(self) -> float:
        if self.policy is None:
            return super().get_backoff_time()
        failures = len(
            list(takewhile(lambda h: h.redirect_location is None, reversed(self.history)))
        )
        return self.policy.backoff(failures - 1) if failures else 0.0

    def parse_retry_after(self, retry_after: str) -> float:
        seconds = super().parse_retry_after(retry_after)
        cap = self.policy.retry_after_cap if self.policy is not None else None
        return seconds if cap is None else min(seconds, cap)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header value, at least 0; None when there is none,
    or it is an HTTP date or no number (the caller then keeps its own backoff).

    Examples
    --------
    >>> parse_retry_after("3"), parse_retry_after("-1"), parse_retry_after("")
    (3.0, 0.0, None)
    >>> parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    True
    """
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def error_for(
    status: int | None,
    *,
    what: str,
    url: str,
    credentials_sent: bool,
    detail: str = "",
    user: str | None = None,
    kind: type[ReadError] | type[SearchError] = ReadError,
) -> TerrascopeError:
    """The error for a failed HTTP answer: the one status-to-exception map.

    On a read (``kind=ReadError``), 401 and 403 become an :class:`AuthenticationError`
    that says whom Terrascope refused and what to check; any other status a ``kind``
    error naming what failed, where and the status. The STAC API receives no
    credentials, so its 401/403 are :class:`SearchError` s like its other failures
    (:func:`~xarray_terrascope.catalog.search.search` names protected collections
    itself). The status is kept as the error's ``status_code``; the URL is shown
    without user information, query string or fragment.

    Parameters
    ----------
    status : int or None
        The HTTP status (None: no answer came).
    what : str
        What failed, as a phrase that can follow "refused ... " (``"reading S2A_..."``,
        ``"the STAC search"``).
    url : str
        The URL asked.
    credentials_sent : bool
        Whether the request carried credentials.
    detail : str, default ""
        Appended to the message (say, ``" after 10 attempts"``).
    user : str, optional
        The user whose credentials were sent, named in a refusal.
    kind : type, default ReadError
        The error for statuses other than a refusal: :class:`ReadError` or
        :class:`SearchError`.

    Returns
    -------
    TerrascopeError
        To be raised by the caller (``raise error_for(...) from err``).

    Examples
    --------
    >>> err = error_for(403, what="reading A", url="https://h/a.tif?s=x", credentials_sent=False)
    >>> type(err).__name__, err.status_code
    ('AuthenticationError', 403)
    >>> print(err)  # doctest: +NORMALIZE_WHITESPACE
    Terrascope refused a request without credentials reading A (https://h/a.tif): HTTP 403.
    Check the credentials (login()'s, or the credentials= the cube was opened with) and
    TERRASCOPE_DOWNLOAD_HOSTS.
    >>> print(error_for(404, what="reading A", url="https://h/a.tif", credentials_sent=True))
    Reading A (https://h/a.tif) failed: HTTP 404
    """
    where = f"{what} ({config.public_url(url)})"
    if status in REFUSED and kind is ReadError:
        if not credentials_sent:
            who = "a request without credentials"
        else:
            who = f"user {user!r}" if user else "the credentials"
        return AuthenticationError(
            f"Terrascope refused {who} {where}: HTTP {status}. Check the credentials "
            "(login()'s, or the credentials= the cube was opened with) and "
            "TERRASCOPE_DOWNLOAD_HOSTS.",
            status_code=status,
        )
    answer = f"HTTP {status}" if status is not None else "no HTTP answer"
    return kind(f"{where[:1].upper()}{where[1:]} failed: {answer}{detail}", status_code=status)


#: The read engine's range requests: many small requests, so short waits at first.
ENGINE = RetryPolicy(attempts=10, backoff_base=0.05, backoff_cap=4.0)
#: GDAL's reads (each retry reopens the file: GDAL's state of it is dropped first).
GDAL = RetryPolicy(attempts=6, backoff_base=0.1, backoff_cap=4.0)
#: Statuses the requests-based callers (search, login) retry: 408 and 425 never were.
REQUESTS_TRANSIENT = frozenset({429, 500, 502, 503, 504})
#: STAC API requests (a search may be a POST), timed as urllib3 times them (no jitter,
#: the first retry at once, a 120 s cap): waits of 0, 1, 2, 4 and 8 s.
SEARCH = RetryPolicy(
    attempts=6,
    backoff_base=0.5,
    backoff_cap=120.0,
    jitter=0.0,
    transient=REQUESTS_TRANSIENT,
    retry_after_cap=None,
    first_retry_at_once=True,
)
#: The request that proves credentials at login, timed as :data:`SEARCH`: waits of 0,
#: 0.5, 1 and 2 s.
LOGIN = RetryPolicy(
    attempts=5,
    backoff_base=0.25,
    backoff_cap=120.0,
    jitter=0.0,
    transient=REQUESTS_TRANSIENT,
    retry_after_cap=None,
    first_retry_at_once=True,
)
