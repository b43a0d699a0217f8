"""The issue's stories, shorter, through the generated Python module against a real
cairn-relay on loopback (started by scripts/bindings.sh): the network is the `websockets`
sync client in threads plus urllib, the keystore a dict. Prints `N passed, N failed`;
exits non-zero on any failure.

usage: stories.py RELAY_URL ORGANISER_INVITE RELAY_DATA_DIR WORK_DIR
(with the generated cairn.py and libcairn_mobile.so on PYTHONPATH)
"""

import asyncio
import os
import queue
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import websockets.exceptions
import websockets.sync.client

import cairn

WAIT_S = 30.0


class Failure(Exception):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise Failure(what)


async def wait_for(what: str, condition) -> None:
    """Polls `condition` (a function, maybe async) until it holds; fails after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise Failure(f"{what}: not within {WAIT_S:.0f} s")
        await asyncio.sleep(0.025)


def retry_after(headers) -> int | None:
    value = (headers.get("Retry-After") or "").strip() if headers is not None else ""
    return int(value) if value.isdigit() else None


# --- the host's network ------------------------------------------------------------------

class Socket(cairn.PlatformSocket):
    """One websocket: a thread dials and reads, another sends in order."""

    def __init__(self, network: "Network", url: str, bearer: str | None, events) -> None:
        self.network, self.events = network, events
        self.outbox: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.state = "dialing"  # then "open", then "ended"
        self.ws = None
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else None
        threading.Thread(target=self._run, args=(url, headers), daemon=True).start()

    def _run(self, url: str, headers) -> None:
        try:
            ws = websockets.sync.client.connect(
                url, additional_headers=headers, open_timeout=10, max_size=None,
                ping_interval=None,  # the client pings through ping()
            )
        except websockets.exceptions.InvalidStatus as e:
            if self._end_dial():
                self.events.refused(e.response.status_code, retry_after(e.response.headers))
            return
        except Exception as e:  # refused connection, timeout, DNS…
            if self._end_dial():
                self.events.unreachable(type(e).__name__)
            return
        with self.lock:
            if self.state != "dialing":
                ws.close()
                return
            self.state, self.ws = "open", ws
        self.network.opened += 1
        self.events.opened()
        threading.Thread(target=self._send_loop, daemon=True).start()
        try:
            for message in ws:
                if isinstance(message, bytes):
                    self.events.frame(message)
        except Exception:
            pass
        self._closed()

    def _end_dial(self) -> bool:
        with self.lock:
            was = self.state
            self.state = "ended"
        self.network.forget(self)
        return was == "dialing"

    def _closed(self) -> None:
        with self.lock:
            was = self.state
            self.state = "ended"
        self.network.forget(self)
        self.outbox.put(None)
        if self.ws is not None:
            self.ws.close()
        if was == "open":
            self.events.closed()

    def _send_loop(self) -> None:
        while (item := self.outbox.get()) is not None:
            try:
                if item == "ping":
                    waiter = self.ws.ping()
                    threading.Thread(target=self._pong, args=(waiter,), daemon=True).start()
                else:
                    self.ws.send(item)
            except Exception:
                self._closed()
                return

    def _pong(self, waiter) -> None:
        if waiter.wait(WAIT_S):
            self.network.pongs += 1
            self.events.pong()

    def send(self, frame: bytes) -> None:
        self.outbox.put(bytes(frame))

    def ping(self) -> None:
        self.outbox.put("ping")

    def disconnect(self) -> None:
        with self.lock:
            dialing = self.state == "dialing"
            if dialing:
                self.state = "ended"
        if dialing:
            self.network.forget(self)
            self.events.unreachable("closed by the client")
        else:
            self._closed()

    def lose(self) -> None:
        """The network went away."""
        with self.lock:
            dialing = self.state == "dialing"
            if dialing:
                self.state = "ended"
        if dialing:
            self.events.unreachable("network off")
        else:
            self._closed()


class Network(cairn.PlatformNetwork):
    """The device's network, with a switch to lose it."""

    def __init__(self) -> None:
        self.online = True
        self.sockets: set[Socket] = set()
        self.lock = threading.Lock()
        self.opened = self.pongs = 0

    def forget(self, socket: Socket) -> None:
        with self.lock:
            self.sockets.discard(socket)

    def set_online(self, on: bool) -> None:
        self.online = on
        if not on:
            with self.lock:
                sockets = list(self.sockets)
            for s in sockets:
                s.lose()

    def open_socket(self, url: str, bearer: str | None, events):
        if not self.online:
            dead = Socket.__new__(Socket)
            dead.network, dead.events, dead.state, dead.ws = self, events, "ended", None
            dead.lock, dead.outbox = threading.Lock(), queue.Queue()
            events.unreachable("network off")
            return dead
        socket = Socket(self, url, bearer, events)
        with self.lock:
            self.sockets.add(socket)
        return socket

    def http_request(self, request, reply) -> None:
        if not self.online:
            reply.unreachable("network off")
            return
        threading.Thread(target=self._http, args=(request, reply), daemon=True).start()

    @staticmethod
    def _http(request, reply) -> None:
        headers = {}
        if request.bearer is not None:
            headers["Authorization"] = f"Bearer {request.bearer}"
        body = bytes(request.json_body) if request.json_body is not None else None
        if body is not None:
            headers["Content-Type"] = "application/json"
        r = urllib.request.Request(request.url, data=body, headers=headers, method=request.method)
        try:
            with urllib.request.urlopen(r, timeout=30) as response:
                reply.respond(response.status, retry_after(response.headers), response.read())
        except urllib.error.HTTPError as e:  # an answer all the same (401, 404, 429…)
            reply.respond(e.code, retry_after(e.headers), e.read())
        except Exception as e:
            reply.unreachable(type(e).__name__)


class Keystore(cairn.CredentialKeeper):
    def __init__(self) -> None:
        self.credentials: dict[str, str] = {}

    def keep(self, relay_url: str, credential: str) -> None:
        self.credentials[relay_url] = credential


class ThreadSeen(cairn.ThreadListener):
    def __init__(self) -> None:
        self.values, self.errors = [], 0

    def on_update(self, value) -> None:
        self.values.append(value)

    def on_error(self, error) -> None:
        self.errors += 1


class MinutesSeen(cairn.MinutesListener):
    def __init__(self) -> None:
        self.values, self.errors = [], 0

    def on_update(self, value) -> None:
        self.values.append(value)

    def on_error(self, error) -> None:
        self.errors += 1


def text_of(t):
    """A MinutesText as plain tuples (text; paragraphs with kind, range, runs and marks),
    to compare two devices' copies."""
    return (t.text, tuple((repr(p.kind), p.start, p.end,
                           tuple((r.text, r.bold, r.italic, r.link, r.off_record) for r in p.runs))
                          for p in t.paragraphs))


JOURNAL_KEY = bytes((i * 7 + 3) % 256 for i in range(32))


class Device:
    def __init__(self, name: str, directory: Path) -> None:
        self.name, self.dir = name, directory
        self.network, self.keystore = Network(), Keystore()
        self.cairn = self._start()

    def config(self, journal_key: bytes = JOURNAL_KEY):
        return cairn.CairnConfig(
            data_dir=str(self.dir),
            relays=[cairn.RelayConfig(url=u, credential=c) for u, c in self.keystore.credentials.items()],
            journal_key=journal_key,
            time_zone="Europe/London",
            device_name=self.name,
        )

    def _start(self):
        return cairn.Cairn(self.config(), self.network, self.keystore)

    async def restart(self) -> None:
        """The app is closed and opened again. The store's lock goes with the old runtime's
        threads a moment after shutdown returns: start-up is retried until then (bounded)."""
        await self.cairn.shutdown()
        self.cairn = None
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                self.cairn = self._start()
                return
            except cairn.CairnError.Generic:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def online(self) -> None:
        def up():
            relays = self.cairn.relays()
            return relays and all(r.state == cairn.ConnectionState.ONLINE for r in relays)
        await wait_for(f"{self.name} online", up)


def all_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


class Run:
    def __init__(self, url: str, invite: str, relay_data: Path, work: Path) -> None:
        self.url, self.invite, self.relay_data, self.work = url, invite, relay_data, work
        tag = uuid.uuid4().hex[:8]
        self.post_text = f"Chapter 3 raised questions for me {tag}"
        self.reflections = [f"Supervision left me uneasy {tag}", f"Ask for a debrief sooner {tag}"]
        self.not_kept: list[str] = []

    async def invite_join_post(self) -> None:
        """(3) An invite; a second device previews, joins, accepts, posts; the first sees it."""
        self.organiser = Device("organiser-laptop", self.work / "organiser")
        ws = self.organiser.cairn.workspace()
        preview = await ws.preview_invite(self.url, self.invite)
        check(preview.role == cairn.Role.ORGANISER, "the bootstrap invite is an organiser's")
        enrolment = await ws.join(self.url, self.invite, "Robin")
        self.group_id = enrolment.group_id
        self.kept_through_keeper(self.organiser, enrolment.credential)
        await ws.accept_code_of_conduct(self.group_id, preview.code_of_conduct_version)
        await self.organiser.online()
        group = self.organiser.cairn.group(self.group_id)
        await group.set_up(cairn.GroupProfile(
            name="Peer support circle", purpose="Monthly practice", meeting_place=None,
            intended_size=None, start_date=None, end_date=None, state=cairn.GroupState.ACTIVE,
            start_here=None, crisis_support=None))
        invite = await group.create_invite(cairn.InviteRequest(
            role=cairn.Role.MEMBER, expires_in_secs=600, max_uses=1, meeting_id=None,
            access_expires_in_secs=None))
        thread = await group.create_thread("Readings", "Chapter 3 first")
        check(not (await self.organiser.cairn.sync_now(10_000)).pending, "the thread reached the relay")
        seen = ThreadSeen()
        subscription = thread.subscribe(seen)

        self.member = Device("member-laptop", self.work / "member")
        mws = self.member.cairn.workspace()
        mpreview = await mws.preview_invite(self.url, invite.link)
        check(mpreview.group_id == self.group_id and mpreview.role == cairn.Role.MEMBER, "the invite previews")
        menrolment = await mws.join(self.url, invite.link, "Ana")
        self.kept_through_keeper(self.member, menrolment.credential)
        await mws.accept_code_of_conduct(self.group_id, mpreview.code_of_conduct_version)
        await self.member.online()
        mthread = self.member.cairn.group(self.group_id).thread(thread.id())

        async def has_posts():
            try:
                return bool((await mthread.read()).posts)
            except cairn.CairnError:
                return False
        await wait_for("the thread reaches the member", has_posts)
        post_id = await mthread.post(self.post_text)

        def shown():
            last = seen.values[-1] if seen.values else None
            return last is not None and any(p.id == post_id for p in last.posts)
        await wait_for("the organiser's listener shows the member's post", shown)
        post = next(p for p in seen.values[-1].posts if p.id == post_id)
        check(post.text == self.post_text and post.author == menrolment.member_id, "the post arrived whole")
        check(seen.errors == 0, "no listener errors")
        subscription.cancel()
        check(not self.not_kept, f"the credential reached the keystore through the keeper on: {self.not_kept}")

    def kept_through_keeper(self, device: Device, credential: str | None) -> None:
        """The join's credential must have come through the keeper; if not, the story fails
        at its end, and the keystore gets it anyway so the stories after it can run."""
        check(credential is not None, "a new device's credential")
        if device.keystore.credentials.get(self.url) != credential:
            self.not_kept.append(device.name)
            device.keystore.credentials[self.url] = credential

    async def reflections_survive_a_restart(self) -> None:
        """(1) Two reflections survive a restart; the relay's store has neither."""
        await self.member.online()
        journal = self.member.cairn.journal()
        ids = [await journal.write(f"Reflection {i + 1}", None, text, [])
               for i, text in enumerate(self.reflections)]
        # Every handle holds the store open: an app lets go of them all before a restart.
        del journal
        await self.member.restart()
        await self.member.online()  # with the credential from the keystore
        listed = {r.id: r.body for r in await self.member.cairn.journal().list()}
        for rid, text in zip(ids, self.reflections):
            check(listed.get(rid) == text, f"reflection {rid} read back whole after the restart")
        stored = all_bytes(self.relay_data)
        check(self.post_text.encode() in stored, "positive control: the post is in the relay's store")
        for i, text in enumerate(self.reflections):
            check(text.encode() not in stored, f"reflection {i + 1} is not in the relay's store")

    async def minutes_co_edited_offline_and_back(self) -> None:
        """(2) Two devices co-edit the minutes, one offline for part of it; both end the same."""
        meeting = await self.organiser.cairn.group(self.group_id).create_meeting("March meeting", cairn.MeetingKind.OTHER)
        a = meeting.minutes()
        check(not (await self.organiser.cairn.sync_now(10_000)).pending, "the meeting reached the relay")
        b = self.member.cairn.group(self.group_id).meeting(meeting.id()).minutes()
        a_seen, b_seen = MinutesSeen(), MinutesSeen()
        subscriptions = [a.subscribe(a_seen), b.subscribe(b_seen)]
        await wait_for("the member's app shows the minutes",
                       lambda: a_seen.values and b_seen.values and
                       text_of(a_seen.values[-1].current) == text_of(b_seen.values[-1].current))

        def first_start(t) -> int:
            return t.paragraphs[0].start if t.paragraphs else 0

        await a.insert_text(first_start((await a.read()).current), "Alpha welcomes everyone. ")
        await wait_for("the organiser's edit on the member's device",
                       lambda: b_seen.values and "Alpha welcomes" in b_seen.values[-1].current.text)
        self.member.network.set_online(False)

        def offline():
            return all(r.state != cairn.ConnectionState.ONLINE for r in self.member.cairn.relays())
        await wait_for("the member's app shows offline", offline)
        at = first_start((await b.read()).current)
        await b.insert_text(at, "Offline idea. ")
        await b.set_bold(at, at + len("Offline idea"), True)
        check(b.id() in (await self.member.cairn.sync_now(300)).pending, "the offline edit is pending, not lost")
        # Elsewhere than the bold range's start: text typed concurrently right there can
        # take the bold too (Automerge's mark boundary), which this story is not about.
        current = (await a.read()).current
        await a.insert_text(current.paragraphs[1].start if len(current.paragraphs) > 1 else current.length,
                            "Room booked. ")
        self.member.network.set_online(True)
        await self.member.online()

        def same():
            x = a_seen.values[-1].current if a_seen.values else None
            y = b_seen.values[-1].current if b_seen.values else None
            return (x is not None and y is not None and text_of(x) == text_of(y)
                    and "Offline idea" in x.text and "Room booked" in x.text and "Alpha" in x.text)
        await wait_for("both devices show the same minutes", same)
        final = text_of((await a.read()).current)
        check(final == text_of((await b.read()).current), "read() agrees on both devices")
        check(any(run[0] == "Offline idea" and run[1] for p in final[1] for run in p[3]),
              "the member's bold mark survived the merge")
        for sub in subscriptions:
            sub.cancel()

    async def typed_errors(self) -> None:
        ws = self.organiser.cairn.workspace()
        try:
            await ws.join(self.url, self.invite, "Someone")
            raise Failure("a used invite was accepted")
        except cairn.CairnError.InviteExpired:
            pass
        try:
            cairn.Cairn(self.member.config(journal_key=bytes(16)), Network(), Keystore())
            raise Failure("a 16-byte journal key was accepted")
        except cairn.CairnError.Invalid:
            pass
        # A credential the relay does not know: the upgrade is refused (401) and the app
        # shows the relay as Unauthorized.
        stranger = cairn.Cairn(cairn.CairnConfig(
            data_dir=str(self.work / "stranger"),
            relays=[cairn.RelayConfig(url=self.url, credential="cairn1_" + "0" * 16 + "_" + "1" * 16 + "_" + "ab" * 32)],
            journal_key=JOURNAL_KEY, time_zone="Europe/London", device_name=None), Network(), Keystore())
        try:
            await wait_for("a device with an unknown credential shows Unauthorized", lambda: any(
                r.state == cairn.ConnectionState.UNAUTHORIZED for r in stranger.relays()))
        finally:
            await stranger.shutdown()

    async def shutdown(self) -> None:
        for device in (getattr(self, "organiser", None), getattr(self, "member", None)):
            if device is not None and device.cairn is not None:
                await device.cairn.shutdown()


async def main() -> int:
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    run = Run(sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
    passed = failed = 0
    for name, story in [
        ("story 3: an invite, a second device joins, accepts, posts; the first sees it", run.invite_join_post),
        ("story 1: two reflections survive a restart and never reach the relay", run.reflections_survive_a_restart),
        ("story 2: two devices co-edit the minutes, one offline for part of it, and agree",
         run.minutes_co_edited_offline_and_back),
        ("typed errors: a used invite, a bad journal key; a refused upgrade shows Unauthorized", run.typed_errors),
    ]:
        try:
            await story()
            passed += 1
            print(f"ok   {name}", flush=True)
        except Exception as e:  # a failed check or an unexpected error: the story fails
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
    await run.shutdown()
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    code = asyncio.run(main())
    sys.stdout.flush()
    os._exit(code)  # Cairn's runtime threads must not keep the process alive
