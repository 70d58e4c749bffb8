"""The wire rules: op numbers, status codes, ring parameters, key syntax and
the one check of an operation that the servicer, the client and the shell apply.

A leaf on the lowest floor, beside errors.py: it imports nothing of chordctl
but errors, and neither grpc nor protobuf. The op numbers are chord.v1.Op's
and the status codes are grpc.StatusCode's numbers (tests/test_proto.py
checks both), so a code travels unchanged from the store through a node's
pipeline into a reply and on to a client's ChordError. The log record format
(core/storage/records.py) writes these op numbers: it maps to them, not they
to it.
"""

from __future__ import annotations

import sys

from chordctl.errors import (AlreadyExistsError, ChordError, DeadlineExceededError,
                             InternalError, InvalidInputError, NotFoundError,
                             ResourceExhaustedError, UnavailableError)

# -- operations (chord.v1.Op) ---------------------------------------------------

OP_CREATE = 1
OP_READ = 2
OP_UPDATE = 3
OP_DELETE = 4
OPS = {"create": OP_CREATE, "read": OP_READ, "update": OP_UPDATE, "delete": OP_DELETE}
OP_NAMES = {number: name for name, number in OPS.items()}
MUTATIONS = (OP_CREATE, OP_UPDATE, OP_DELETE)   # what the log records
# Not an operation: a log record saying "replica group <key> has applied its
# Raft entry <value: 8 bytes, little-endian>" (ring.replicas > 1; records.py).
OP_RAFT = 8
LOGGED = MUTATIONS + (OP_RAFT,)                  # every op a log record may carry
_DONE = {OP_CREATE: "created", OP_READ: "read", OP_UPDATE: "updated", OP_DELETE: "deleted"}

# -- status codes: grpc.StatusCode's numbers, in this order --------------------

CODE_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
              "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
              "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
              "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
OK = 0
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
ALREADY_EXISTS = 6
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
ABORTED = 10
INTERNAL = 13
UNAVAILABLE = 14

# The ChordError a client raises for a code (its exit_status is the CLI's exit
# code); any other code is an InternalError.
ERRORS: dict[int, type[ChordError]] = {
    NOT_FOUND: NotFoundError,
    ALREADY_EXISTS: AlreadyExistsError,
    INVALID_ARGUMENT: InvalidInputError,
    UNAVAILABLE: UnavailableError,
    DEADLINE_EXCEEDED: DeadlineExceededError,
    RESOURCE_EXHAUSTED: ResourceExhaustedError,
    ABORTED: UnavailableError,
    CANCELLED: UnavailableError,
}


def code_name(code: int) -> str:
    """The gRPC name of a status code (``NOT_FOUND``); the number itself if unknown."""
    return CODE_NAMES[code] if 0 <= code < len(CODE_NAMES) else str(code)


def error_class(code: int) -> type[ChordError]:
    """The ChordError subclass a client raises for a status code."""
    return ERRORS.get(code, InternalError)


def never_sent(code: int, details: str) -> bool:
    """Whether a failed call never left the caller: gRPC's own UNAVAILABLE
    "failed to connect ..." (a node's relayed message names its node first),
    so even a write is safe to send again."""
    return code == UNAVAILABLE and details.lower().startswith("failed to connect")


# ring.replicas > 1: a call made only of reads gets this share of its time at
# the first replica (a node's router, core/router.py) or node (a client's own
# route, client.py) it goes to, so that one stopped or cut off -- it takes the
# connection and never answers -- leaves time for the next; a read is safe to
# ask twice. A call with a write waits its whole time: its outcome is unknown.
READ_FIRST = 0.5


def first_share(reads_only: bool, replicated: bool, otherwise: float = 1.0) -> float:
    """The share of a call's remaining time its first node gets: READ_FIRST for
    a call made only of reads that has another replica to go to if that node
    is silent, else *otherwise* (a node's router keeps some time for itself)."""
    return READ_FIRST if reads_only and replicated else otherwise


# -- ring parameters every node and client must agree on -----------------------

PLACEMENTS = ("direct", "hash")
ROUTINGS = ("fingers", "neighbors")
MIN_BITS = 1
MAX_BITS = 4096


# -- keys, values and the check of one operation --------------------------------

def parse_key(text: str, max_digits: int) -> tuple[int, bytes]:
    """A key's decimal text -> (int, canonical ASCII); ValueError says what is wrong."""
    if not text:
        raise ValueError("key is empty; give a non-negative integer such as 42")
    if not text.isascii() or not text.isdigit():
        if text.startswith("-") and text[1:].isdigit():
            raise ValueError(f"key {text} is negative; keys are non-negative integers")
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise ValueError(f"key {shown!r} is not a non-negative decimal integer")
    if len(text) > max_digits:
        raise ValueError(f"key has {len(text)} digits; the limit is {max_digits} "
                         f"(limits.max_key_digits)")
    key = int(text)
    if text[0] == "0" and len(text) > 1:
        text = str(key)
    return key, text.encode()


def key_text(key: int | str) -> str:
    """A key as the wire carries it: an int's decimal text, a str as given.

    The client library takes keys as ints or decimal strings; the text is
    checked afterwards by validate() like any other key. Anything else (a
    bool, a float, bytes) is refused here with InvalidInputError.
    """
    cls = key.__class__
    if cls is str:
        return key
    if cls is int:
        if key < 0:
            raise InvalidInputError("key is negative; keys are non-negative integers")
        try:
            return str(key)
        except ValueError:      # past sys.get_int_max_str_digits() (allow_key_digits)
            raise InvalidInputError(f"key has more than {sys.get_int_max_str_digits()} "
                                    f"digits (limits.max_key_digits)") from None
    if isinstance(key, int) and not isinstance(key, bool):
        return key_text(int(key))
    raise InvalidInputError(f"key {key!r} is a {cls.__name__}; give an int or a decimal "
                            f"string such as 42")


def check_key(text: str, max_digits: int) -> tuple[int, bytes]:
    """parse_key, raising InvalidInputError."""
    try:
        return parse_key(text, max_digits)
    except ValueError as e:
        raise InvalidInputError(str(e)) from None


def check_value(op_name: str, value: bytes | None, max_value: int) -> None:
    """The value of a create or update: present, and at most *max_value* bytes."""
    if value is None:
        raise InvalidInputError(f"{op_name} needs a value")
    if len(value) > max_value:
        raise InvalidInputError(f"value of {len(value)} bytes is over the limit of "
                                f"{max_value} bytes (limits.max_value_bytes)")


def unknown_operation(op: int | str) -> InvalidInputError:
    return InvalidInputError(f"unknown operation {op!r}; expected create, read, update "
                             f"or delete")


def validate(op: int | str, key: str, value: bytes | None,
             limits) -> tuple[int, int, bytes, bytes]:
    """Check one operation as every node does, before it changes anything.

    *op* is a number or a name; *limits* a config.LimitsConfig. Returns
    (op number, key, canonical key text, value -- empty for read and
    delete); raises InvalidInputError saying what is wrong.
    """
    number = OPS.get(op) if op.__class__ is str else op
    if number not in OP_NAMES:
        raise unknown_operation(op)
    k, canon = check_key(key, limits.max_key_digits)
    if number == OP_CREATE or number == OP_UPDATE:
        check_value(OP_NAMES[number], value, limits.max_value_bytes)
        return number, k, canon, value
    return number, k, canon, b""


def describe(op: int, key: str, code: int, node: str, owner: bool = True) -> str:
    """The human sentence of a result produced by *node* (``node 1 (id 49151)``):
    the key's owner, or with *owner* False (ring.replicas > 1) the replica of
    its arc that answered."""
    where = f"owner: {node}" if owner else f"answered by {node}, a replica of its arc"
    if code == OK:
        return f"{_DONE[op]} key {key} on {node}"
    if code == NOT_FOUND:
        return f"key {key} not found ({where})"
    if code == ALREADY_EXISTS:
        return f"key {key} already exists ({where}); use update to change it"
    return f"{OP_NAMES.get(op, 'operation')} of key {key} failed on {node} (code {code})"


def allow_key_digits(digits: int) -> None:
    """Let int() and str() take keys of *digits* digits in this process.

    Python refuses decimal conversions past 4,300 digits by default (a guard
    against quadratic parsing); limits.max_key_digits (capped in config.py)
    is the guard here, so nodes and clients lift Python's to it."""
    current = sys.get_int_max_str_digits()
    if current and current < digits:
        sys.set_int_max_str_digits(digits)


# -- how much one Batch call carries ---------------------------------------------

# The largest reply a node sends and any chordctl channel receives
# (security.CHANNEL_OPTIONS; core/server.py): a Batch of reads answers with
# their values, which the client cannot know the size of in advance.
REPLY_LIMIT = 256 * 1024 * 1024
# Bytes an operation costs in a Batch request besides its key and value
# (tags, lengths, op, hops: under 20), and in a reply besides a read's key
# and value (code, message, node id, route): margins, not measurements.
OP_OVERHEAD = 32
REPLY_OVERHEAD = 256
MESSAGE_MARGIN = 64 * 1024


def message_limit(max_value_bytes: int) -> int:
    """The largest request a node receives (grpc.max_receive_message_length):
    one operation of the largest value always fits, with room for its key."""
    return max_value_bytes * 2 + 16 * 1024 * 1024


class BatchFit:
    """How many operations one Batch call may carry under ``limits`` (its
    *max_value_bytes* and *max_batch_ops*): within what a node receives, and
    with a reply within REPLY_LIMIT counting every read as one of the largest
    value. The first operation always fits (message_limit is made so)."""

    __slots__ = ("max_ops", "request", "reply", "read_reply", "sure")

    def __init__(self, max_value_bytes: int, max_batch_ops: int, max_key_digits: int = 100):
        self.max_ops = max_batch_ops
        self.request = message_limit(max_value_bytes) - MESSAGE_MARGIN
        self.reply = REPLY_LIMIT - MESSAGE_MARGIN
        self.read_reply = max_value_bytes + REPLY_OVERHEAD
        worst = max_value_bytes + max_key_digits + REPLY_OVERHEAD
        # This many always fit, whatever they are: no need to look at them.
        self.sure = max(1, min(max_batch_ops, self.request // worst, self.reply // worst))

    def count(self, ops, start: int = 0, read: int | str = OP_READ) -> int:
        """How many of *ops* from *start* go in one call (at least 1): a
        sequence of objects with .op (*read* for a read), .key and .value
        (bytes, or None)."""
        n = min(len(ops) - start, self.max_ops)
        if n <= self.sure:
            return n
        request, reply, read_reply = self.request, self.reply, self.read_reply
        for i in range(n):
            o = ops[start + i]
            k = len(o.key)
            request -= k + len(o.value or b"") + OP_OVERHEAD
            reply -= k + (read_reply if o.op == read else REPLY_OVERHEAD)
            if (request < 0 or reply < 0) and i:
                return i
        return n

    def runs(self, ops: list, read: int | str = OP_READ) -> list[tuple[int, int]]:
        """*ops* cut, in order, into the runs that each go in one call, as
        (start, end) slices."""
        out = []
        start = 0
        while start < len(ops):
            end = start + self.count(ops, start, read)
            out.append((start, end))
            start = end
        return out
