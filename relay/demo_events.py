"""Deterministic, realistic Stream Chat webhook bodies for the demo and the benchmarks.

`generate` yields raw JSON shaped like Stream's payloads (FACTS §7.4, §7.5); every
`oversize_every`-th body is built to exceed the SNS size limit, so a demo shows drops.
"""

# Multilingual text is the point of the sample data, so look-alike letters are expected.
# ruff: noqa: RUF001

from __future__ import annotations

import html
import itertools
import random
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

import orjson

from relay import limits

Json = dict[str, Any]

EVENT_WEIGHTS: Mapping[str, int] = MappingProxyType(
    {
        "message.new": 2600, "message.read": 2200, "message.updated": 350,
        "message.deleted": 150, "message.flagged": 20,
        "reaction.new": 700, "reaction.updated": 40, "reaction.deleted": 150,
        "member.added": 250, "member.updated": 150, "member.removed": 100,
        "channel.created": 120, "channel.updated": 150, "channel.muted": 30,
        "channel.unmuted": 20, "channel.truncated": 15, "channel.deleted": 20,
        "channel.hidden": 40,
        "user.updated": 900, "user.deactivated": 10, "user.deleted": 10,
        "user.reactivated": 8, "user.muted": 25, "user.unmuted": 15, "user.banned": 20,
        "user.unbanned": 10, "user.messages.deleted": 8, "user.flagged": 15,
        "user.unread_message_reminder": 60,
        "export.users.success": 6, "export.users.error": 6,
        "export.channels.success": 6, "export.channels.error": 6,
        "reminder.created": 20, "reminder.updated": 8, "reminder.deleted": 8,
        "notification.reminder_due": 15,
    }
)  # fmt: skip
"""Every type a hook receives (FACTS §7.5) with its relative weight: chat traffic dominates."""

EVENT_TYPES: tuple[str, ...] = tuple(EVENT_WEIGHTS)
CHANNEL_TYPES = ("messaging", "livestream", "team", "commerce", "gaming")
MAX_MEMBERS = 50
"""Stream truncates an event's `members[]` to 50 (FACTS §7.4)."""

DEFAULT_OVERSIZE_EVERY = 500
ATTRIBUTES_ALLOWANCE_BYTES = 512
"""Headroom kept under the limit for the SNS attributes the relay adds to every event."""

MAX_TEXT_CHARS = 5_000
"""Stream's default `max_message_length`: ordinary message texts never exceed it."""

_CUM_WEIGHTS = list(itertools.accumulate(EVENT_WEIGHTS.values()))
_START = datetime(2026, 3, 14, 9, 0, 0)  # naive UTC, so isoformat() adds no "+00:00"
_FRAGMENTS = (
    "hey, are we still on for tomorrow?", "lol that's amazing", "ok", "gg wp",
    "Can you send me the invoice for order #4821?", "The build is green again, merging now.",
    "sounds good 👍", "Running 10 min late, start without me", "I'll push the fix after lunch.",
    "Here's the doc: https://example.com/docs/q3-plan", "Thanks for the quick reply!",
    "Ça marche, on se voit au café à 15h ?", "¿Dónde está la reunión de mañana?",
    "Grüße aus München! Die Brötchen sind fertig.", "Já chegou a encomenda? Obrigado!",
    "Zażółć gęślą jaźń", "Ευχαριστώ πολύ για τη βοήθεια", "Привет! Как дела?",
    "cảm ơn bạn nhiều", "明日の会議は10時からです。よろしくお願いします。",
    "这个功能什么时候上线？", "오늘 저녁에 같이 밥 먹을래요?", "谢谢你的帮助！🙏",
    "🎉🎉🎉 congrats!!", "🔥🔥 this is fire", "👨‍👩‍👧‍👦 family dinner at 7",
    "🏳️‍🌈 stream starting soon 🎥", "مرحبا، هل وصل الطلب؟", "شكرا جزيلا على المساعدة 🌹",
    "שלום, מה שלומך היום?", "תודה רבה! נתראה מחר", "Notes — 会议记录 — محضر الاجتماع",
    'she said "ship it" & left', "naïve café résumé — 東京 — 🍣",
)  # fmt: skip
# No JSON or HTML escapes in the filler, so its UTF-8 length is its length in the body.
_FILLER = "Lorem ipsum — café 東京 🚀 مرحبا שלום; " * 32
_FILLER_BYTES = len(_FILLER.encode())
_NAMES = (
    "José García", "Zoë Müller", "François Lefèvre", "Björn Ólafsson", "Łukasz Wójcik",
    "Ayşe Yılmaz", "山田太郎", "李伟", "김민준", "محمد العلي", "فاطمة الزهراء", "דוד כהן",
    "שרה לוי", "Nguyễn Văn An", "Александр Петров", "Δημήτρης Παπαδόπουλος", "Priya Sharma",
    "John Smith", "Emma Brown", "Liam O'Connor", "Chloé Dubois", "🦄 Unicorn", "Ana 🌸",
)  # fmt: skip
_REACTIONS = ("like", "love", "haha", "wow", "sad", "fire")
_SDKS = (
    "stream-chat-react-13.1.0-stream-chat-javascript-client-browser-9.14.0",
    "stream-chat-swift-4.79.0", "stream-chat-android-6.12.0", "stream-chat-python-4.26.0",
)  # fmt: skip
_AGENTS = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5 Safari",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0.0.0 Safari/537.36",
    "StreamChat/4.79.0 iOS/17.5", "okhttp/4.12.0", "python-requests/2.32.3",
)  # fmt: skip


def is_oversize(index: int, oversize_every: int | None) -> bool:
    """Whether `generate` makes event `index` (0-based) oversize: indices n-1, 2n-1, 3n-1, ...

    Raises ValueError if `oversize_every` is not None and below 1.
    """
    if oversize_every is None:
        return False
    if oversize_every < 1:
        raise ValueError(f"oversize_every must be at least 1 or None, got {oversize_every}")
    return (index + 1) % oversize_every == 0


def oversize_count(count: int, oversize_every: int | None) -> int:
    """How many of `count` generated events are oversize: the drops a demo should expect.

    Raises ValueError if `oversize_every` is not None and below 1.
    """
    is_oversize(0, oversize_every)
    return 0 if oversize_every is None else count // oversize_every


def generate(
    count: int,
    *,
    seed: int = 0,
    oversize_every: int | None = DEFAULT_OVERSIZE_EVERY,
    max_message_bytes: int = limits.SNS_DEFAULT_MAX_MESSAGE_BYTES,
) -> Iterator[bytes]:
    """Yield `count` compact UTF-8 JSON bodies of Stream events, the same ones for a seed.

    Exactly the indices where `is_oversize` holds carry a `message.new` body 1 to 7 KiB over
    `max_message_bytes`. Every other body stays ATTRIBUTES_ALLOWANCE_BYTES under it: one too
    big for a small limit is cut to its type, ids, `created_at` and user id. Raises ValueError
    for a negative count, an `oversize_every` below 1, or a limit outside SNS's range.
    """
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    is_oversize(0, oversize_every)
    limits.validate_max_message_bytes(max_message_bytes)
    return _events(count, seed, oversize_every, max_message_bytes)


def _events(count: int, seed: int, every: int | None, max_bytes: int) -> Iterator[bytes]:
    gen = _Generator(random.Random(seed))
    choices, dumps = gen.rng.choices, orjson.dumps
    for index in range(count):
        if every is not None and (index + 1) % every == 0:
            yield gen.oversize(max_bytes)
            continue
        event = gen.event(choices(EVENT_TYPES, cum_weights=_CUM_WEIGHTS)[0])
        body = dumps(event)
        if len(body) + ATTRIBUTES_ALLOWANCE_BYTES > max_bytes:
            keep = ("type", "cid", "channel_type", "channel_id", "team", "created_at")
            small = {key: event[key] for key in keep if key in event}
            if "user" in event:
                small["user"] = {"id": event["user"]["id"]}
            body = dumps(small)
        yield body


class _Generator:
    """Pools built once per seed (users, channels, texts), so each event is mostly assembly."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.clock = _START
        self.now = self._ts()
        self.users = [self._user(i) for i in range(600)]
        self.unread = [self._unread() for _ in range(64)]
        self.texts = [self._text() for _ in range(1500)]
        self.attachments = [self._attachment(i) for i in range(120)]
        self.reaction_counts = [
            {r: rng.randint(1, 9) for r in rng.sample(_REACTIONS, rng.randint(0, 2))}
            for _ in range(32)
        ]
        self.requests = [
            {
                "type": "client",
                "ip": f"203.0.113.{i}",
                "user_agent": rng.choice(_AGENTS),
                "sdk": rng.choice(_SDKS),
                "ext": "",
            }
            for i in range(40)
        ]
        self.channels = [self._channel(i) for i in range(300)]

    def _ts(self, days_ago: float = 0.0) -> str:
        return (self.clock - timedelta(days=days_ago)).isoformat(timespec="microseconds") + "Z"

    def _uuid(self) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"

    def _user(self, i: int) -> Json:
        rng, created = self.rng, self._ts(self.rng.uniform(30, 900))
        user: Json = {
            "id": f"user-{i:04d}",
            "name": rng.choice(_NAMES),
            "role": rng.choices(("user", "admin", "moderator", "guest"), (90, 2, 5, 3))[0],
            "created_at": created,
            "updated_at": created,
            "last_active": self._ts(rng.random()),
            "banned": False,
            "online": rng.random() < 0.3,
        }
        if rng.random() < 0.4:
            user["image"] = f"https://getstream.io/random_png/?id=user-{i:04d}"
        if rng.random() < 0.5:  # custom user fields, which Stream forwards
            user["country"] = rng.choice(("FR", "DE", "JP", "CN", "KR", "EG", "IL", "US"))
        if rng.random() < 0.15:
            user["bio"] = rng.choice(_FRAGMENTS)
        return user

    def _unread(self) -> Json:
        rng = self.rng
        return {
            "total_unread_count": rng.randint(0, 40),
            "unread_channels": rng.randint(0, 5),
            "channel_last_read_at": self._ts(rng.random()),
            "channel_unread_count": rng.randint(0, 10),
        }

    def _text(self) -> tuple[str, str]:
        rng, size = self.rng, self.rng.random()
        if size < 0.6:
            parts = 1
        elif size < 0.93:
            parts = rng.randint(2, 6)
        elif size < 0.995:
            parts = rng.randint(8, 60)
        else:
            parts = rng.randint(100, 250)
        text = ("\n" if rng.random() < 0.1 else " ").join(rng.choices(_FRAGMENTS, k=parts))
        text = text[:MAX_TEXT_CHARS]
        return text, f"<p>{html.escape(text)}</p>\n"

    def _attachment(self, i: int) -> Json:
        url = f"https://us-east.stream-io-cdn.com/1234/attachments/{self._uuid()}"
        kind = self.rng.choice(("image", "file", "giphy", "article"))
        if kind == "image":
            return {
                "type": "image",
                "image_url": url + "/photo.jpg",
                "thumb_url": url + "/thumb.jpg",
                "fallback": f"IMG_{i:04d}.jpg",
                "original_width": 1080,
                "original_height": 1350,
            }
        if kind == "file":
            return {
                "type": "file",
                "asset_url": url + "/report.pdf",
                "mime_type": "application/pdf",
                "title": "Q3 rapport — 最終版.pdf",
                "file_size": 48_213 + i,
            }
        if kind == "giphy":
            gif = f"https://media.giphy.com/media/{i}/200.gif"
            return {"type": "giphy", "title": "party", "thumb_url": gif, "image_url": gif}
        return {
            "type": "article",
            "og_scrape_url": f"https://example.com/post/{i}",
            "title": "Les nouveautés de l'été ☀️",
            "text": self.rng.choice(_FRAGMENTS),
            "image_url": url + "/og.png",
        }

    def _channel(self, i: int) -> Json:
        rng = self.rng
        ctype = rng.choices(CHANNEL_TYPES, (55, 10, 15, 12, 8))[0]
        low, high = {
            "messaging": (2, 8), "livestream": (50, 20_000), "team": (3, 120),
            "commerce": (2, 3), "gaming": (4, 80),
        }[ctype]  # fmt: skip
        member_count = rng.randint(low, high)
        channel_id = (
            f"!members-{rng.getrandbits(64):016x}" if ctype == "messaging" else f"{ctype}-{i}"
        )
        owner = rng.choice(self.users)
        shown = rng.sample(self.users, min(member_count, MAX_MEMBERS))
        channel: Json = {
            "id": channel_id,
            "type": ctype,
            "cid": f"{ctype}:{channel_id}",
            "created_at": owner["created_at"],
            "updated_at": self._ts(rng.uniform(0, 30)),
            "created_by": owner,
            "frozen": False,
            "disabled": False,
            "member_count": member_count,
            "name": rng.choice(_FRAGMENTS)[:40],
            "config": {
                "name": ctype,
                "typing_events": True,
                "read_events": True,
                "reactions": True,
                "replies": True,
                "uploads": True,
                "max_message_length": MAX_TEXT_CHARS,
                "automod": "disabled",
                "commands": ["giphy"],
            },
        }
        return {
            "channel": channel,
            "members": [self._member(user) for user in shown],
            "team": rng.choice(("acme", "globex", "初音", None, None, None)),
        }

    def _member(self, user: Json) -> Json:
        joined = self._ts(self.rng.uniform(1, 30))
        return {
            "user_id": user["id"],
            "user": user | self.rng.choice(self.unread),
            "status": "member",
            "created_at": joined,
            "updated_at": joined,
            "banned": False,
            "shadow_banned": False,
            "role": "member",
            "channel_role": "channel_member",
            "notifications_muted": False,
        }

    def _message(self, cid: str, user: Json) -> Json:
        rng, now = self.rng, self.now
        text, text_html = rng.choice(self.texts)
        counts = rng.choice(self.reaction_counts)
        message: Json = {
            "id": f"{user['id']}-{self._uuid()}",
            "text": text,
            "html": text_html,
            "type": "regular",
            "user": user,
            "attachments": [rng.choice(self.attachments)] if rng.random() < 0.12 else [],
            "latest_reactions": [],
            "own_reactions": [],
            "reaction_counts": counts,
            "reaction_scores": counts,
            "reply_count": 0,
            "cid": cid,
            "created_at": now,
            "updated_at": now,
            "shadowed": False,
            "mentioned_users": [rng.choice(self.users)] if rng.random() < 0.1 else [],
            "silent": False,
            "pinned": False,
        }
        if rng.random() < 0.1:
            message["priority"] = "high"  # a custom message field, which Stream forwards
        return message

    def event(self, etype: str) -> Json:
        """One event of type `etype`, its `created_at` a few milliseconds after the last."""
        rng = self.rng
        self.clock += timedelta(microseconds=rng.randrange(100, 6000))
        self.now = now = self._ts()
        family = etype.split(".", 1)[0]
        if family == "export":
            task_id = self._uuid()
            if etype.endswith("success"):
                outcome = {"url": f"https://stream-exports.s3.amazonaws.com/{task_id}.json"}
            else:
                outcome = {"error": "export failed: too many records, narrow the filter"}
            return {"type": etype, "task_id": task_id, **outcome, "created_at": now}
        pick = rng.choice(self.channels)
        channel, cid, user = pick["channel"], pick["channel"]["cid"], rng.choice(self.users)
        event: Json = {"type": etype}
        if family != "user" or etype == "user.banned":
            event |= {"cid": cid, "channel_type": channel["type"], "channel_id": channel["id"]}
            if pick["team"]:
                event["team"] = pick["team"]
        event["created_at"] = now
        event["user"] = user | rng.choice(self.unread)
        if etype == "message.read":
            event["last_read_message_id"] = f"{user['id']}-{self._uuid()}"
        elif family in ("message", "reaction"):
            event["message_id"] = (message := self._message(cid, user))["id"]
            event["message"] = message
            if family == "reaction":
                reaction = {
                    "message_id": message["id"],
                    "user_id": user["id"],
                    "user": user,
                    "type": rng.choice(_REACTIONS),
                    "score": 1,
                    "created_at": now,
                    "updated_at": now,
                }
                message["latest_reactions"] = [reaction]
                event["reaction"] = reaction
            elif etype == "message.deleted":
                message |= {"type": "deleted", "deleted_at": now}
            elif etype == "message.flagged":
                event["total_flags"] = rng.randint(1, 3)
        elif family in ("member", "channel"):
            event["members"] = pick["members"]
            if family == "member":
                event["member"] = rng.choice(pick["members"])
            else:
                event["channel"] = channel
        elif family in ("reminder", "notification"):
            event["reminder"] = {
                "channel_cid": cid,
                "user_id": user["id"],
                "message_id": f"{user['id']}-{self._uuid()}",
                "remind_at": self._ts(-1),
                "created_at": now,
                "updated_at": now,
            }
        elif etype in ("user.banned", "user.muted", "user.flagged"):
            event["target_user"] = rng.choice(self.users)
            if etype == "user.banned":
                event |= {"reason": "spam — スパム", "expiration": self._ts(-7), "shadow": False}
        elif etype == "user.unread_message_reminder":
            brief = {k: v for k, v in channel.items() if k != "config"}
            event["channels"] = {cid: {"channel": brief, "messages": [self._message(cid, user)]}}
        if rng.random() < 0.3:
            event["request_info"] = rng.choice(self.requests)
        return event

    def oversize(self, max_bytes: int) -> bytes:
        """A `message.new` body 1 to 7 KiB over `max_bytes`, its text and html full of filler."""
        event = self.event("message.new")
        message = event["message"]
        message |= {"text": "", "html": "<p></p>\n", "attachments": []}
        missing = max_bytes + self.rng.randint(1024, 3072) - len(orjson.dumps(event))
        text = _FILLER * (missing // (2 * _FILLER_BYTES) + 1)
        message |= {"text": text, "html": f"<p>{text}</p>\n"}
        return orjson.dumps(event)
