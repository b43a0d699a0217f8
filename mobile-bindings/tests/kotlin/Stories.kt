// The issue's three stories lived through the Kotlin bindings on the JVM, against a real
// cairn-relay on loopback (started by scripts/bindings.sh with `bootstrap`): the network is
// JdkNetwork (java.net.http), the keystore a map. Prints `N passed, N failed`; exits non-zero
// on any failure.
//
// usage: StoriesKt RELAY_URL ORGANISER_INVITE RELAY_DATA_DIR WORK_DIR
package cairn.stories

import java.io.File
import java.util.UUID
import java.util.concurrent.ConcurrentHashMap
import java.util.concurrent.atomic.AtomicInteger
import kotlin.system.exitProcess
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import uniffi.cairn.BlockKind
import uniffi.cairn.Cairn
import uniffi.cairn.CairnConfig
import uniffi.cairn.CairnException
import uniffi.cairn.ConnectionState
import uniffi.cairn.CredentialKeeper
import uniffi.cairn.CursorRecord
import uniffi.cairn.CursorsListener
import uniffi.cairn.DocumentSyncState
import uniffi.cairn.GroupProfile
import uniffi.cairn.GroupState
import uniffi.cairn.InviteRequest
import uniffi.cairn.MeetingKind
import uniffi.cairn.MinutesListener
import uniffi.cairn.MinutesRecord
import uniffi.cairn.MinutesText
import uniffi.cairn.PeerCursor
import uniffi.cairn.RelayConfig
import uniffi.cairn.RelayStatus
import uniffi.cairn.RelaysListener
import uniffi.cairn.Role
import uniffi.cairn.ThreadListener
import uniffi.cairn.ThreadRecord

/** How long a wait may take before the story fails. */
const val WAIT_MS = 30_000L

class Failure(message: String) : Exception(message)

fun check(condition: Boolean, what: String) {
    if (!condition) throw Failure(what)
}

/** Polls `condition` until it holds; fails after [WAIT_MS]. */
suspend fun waitFor(what: String, condition: suspend () -> Boolean) {
    val deadline = System.currentTimeMillis() + WAIT_MS
    while (!condition()) {
        if (System.currentTimeMillis() > deadline) throw Failure("$what: not within $WAIT_MS ms")
        delay(25)
    }
}

/** Runs `block`, which must throw the typed error [E]. */
inline fun <reified E : CairnException> expectError(what: String, block: () -> Unit): E {
    try {
        block()
    } catch (e: CairnException) {
        if (e is E) return e
        throw Failure("$what: ${e.javaClass.simpleName} instead of ${E::class.simpleName}")
    }
    throw Failure("$what: no error")
}

/** The test's platform keystore: credentials by relay URL. */
class Keystore : CredentialKeeper {
    val credentials = ConcurrentHashMap<String, String>()
    val kept = AtomicInteger()

    override fun keep(relayUrl: String, credential: String) {
        credentials[relayUrl] = credential
        kept.incrementAndGet()
    }
}

/** Every value a listener got, for a story to wait on. */
open class Seen<T> {
    private val values = ArrayList<T>()
    val errors = AtomicInteger()

    fun add(value: T) {
        synchronized(values) { values.add(value) }
    }

    fun count(): Int = synchronized(values) { values.size }

    fun last(): T? = synchronized(values) { values.lastOrNull() }

    /** Waits until the latest value satisfies `check`. */
    suspend fun until(what: String, check: (T) -> Boolean): T {
        var found: T? = null
        waitFor(what) { last()?.takeIf(check)?.also { found = it } != null }
        return found!!
    }
}

class ThreadSeen : Seen<ThreadRecord>(), ThreadListener {
    override fun onUpdate(value: ThreadRecord) = add(value)
    override fun onError(error: CairnException) {
        errors.incrementAndGet()
    }
}

class MinutesSeen : Seen<MinutesRecord>(), MinutesListener {
    override fun onUpdate(value: MinutesRecord) = add(value)
    override fun onError(error: CairnException) {
        errors.incrementAndGet()
    }
}

class CursorsSeen : Seen<List<PeerCursor>>(), CursorsListener {
    override fun onUpdate(value: List<PeerCursor>) = add(value)
    override fun onError(error: CairnException) {
        errors.incrementAndGet()
    }
}

class RelaysSeen : Seen<List<RelayStatus>>(), RelaysListener {
    override fun onUpdate(value: List<RelayStatus>) = add(value)
    override fun onError(error: CairnException) {
        errors.incrementAndGet()
    }
}

val JOURNAL_KEY = ByteArray(32) { (it * 7 + 3).toByte() }

/** One phone: its data directory, its network, its keystore, its Cairn. */
class Device(val name: String, val dir: File) {
    val network = JdkNetwork()
    val keystore = Keystore()
    var cairn: Cairn = start()
        private set

    /** Start-up as an app does it: every relay with the credential from the keystore. */
    fun config() = CairnConfig(
        dataDir = dir.path,
        relays = keystore.credentials.map { (url, credential) -> RelayConfig(url, credential) },
        journalKey = JOURNAL_KEY,
        timeZone = "Europe/London",
        deviceName = name,
    )

    private fun start() = Cairn(config(), network, keystore)

    /**
     * The app is closed and opened again. The store's lock goes with the old runtime's
     * threads a moment after shutdown returns: start-up is retried until then (bounded).
     */
    suspend fun restart() {
        cairn.shutdown()
        cairn.close()
        val deadline = System.currentTimeMillis() + WAIT_MS
        while (true) {
            try {
                cairn = start()
                return
            } catch (e: CairnException.Generic) {
                if (System.currentTimeMillis() > deadline) throw e
                delay(50)
            }
        }
    }

    suspend fun online() = waitFor("$name online") {
        val relays = cairn.relays()
        relays.isNotEmpty() && relays.all { it.state == ConnectionState.ONLINE }
    }
}

fun contains(haystack: ByteArray, needle: ByteArray): Boolean {
    if (needle.isEmpty() || haystack.size < needle.size) return false
    outer@ for (i in 0..haystack.size - needle.size) {
        for (j in needle.indices) if (haystack[i + j] != needle[j]) continue@outer
        return true
    }
    return false
}

/** Every byte of every file under `dir`. */
fun allBytes(dir: File): ByteArray =
    dir.walkTopDown().filter { it.isFile }.map { it.readBytes() }.fold(ByteArray(0)) { a, b -> a + b }

class Run(val relayUrl: String, val organiserInvite: String, val relayData: File, val work: File) {
    // Unique per run, so a search can only find what this run wrote.
    private val tag = UUID.randomUUID().toString().take(8)
    val postText = "Chapter 3 raised questions for me $tag"
    val reflections = listOf(
        "Supervision left me uneasy about the referral $tag",
        "Next time I will ask for a debrief sooner $tag",
    )

    lateinit var organiser: Device
    lateinit var member: Device
    lateinit var groupId: String

    /** The devices started so far. */
    fun devices(): List<Device> = listOfNotNull(
        if (this::organiser.isInitialized) organiser else null,
        if (this::member.isInitialized) member else null,
    )

    /** (3) An organiser invites; a second device previews, joins, accepts, posts; the first sees it. */
    suspend fun inviteJoinPost() {
        organiser = Device("organiser-phone", File(work, "organiser"))
        val workspace = organiser.cairn.workspace()
        val preview = workspace.previewInvite(relayUrl, organiserInvite)
        check(preview.role == Role.ORGANISER, "the bootstrap invite is an organiser's")
        check(preview.codeOfConduct.isNotEmpty(), "the invite shows the code of conduct")
        val enrolment = workspace.join(relayUrl, organiserInvite, "Robin")
        groupId = enrolment.groupId
        check(enrolment.groupId == preview.groupId, "joined the previewed group")
        keptThroughKeeper(organiser, enrolment.credential)
        workspace.acceptCodeOfConduct(groupId, preview.codeOfConductVersion)
        organiser.online()
        val group = organiser.cairn.group(groupId)
        group.setUp(
            GroupProfile(
                name = "Peer support circle",
                purpose = "Monthly practice",
                meetingPlace = null,
                intendedSize = null,
                startDate = null,
                endDate = null,
                state = GroupState.ACTIVE,
                startHere = null,
                crisisSupport = null,
            ),
        )
        val invite = group.createInvite(
            InviteRequest(
                role = Role.MEMBER,
                expiresInSecs = 600uL,
                maxUses = 1u,
                meetingId = null,
                accessExpiresInSecs = null,
            ),
        )
        val thread = group.createThread("Readings", "Chapter 3 first")
        check(organiser.cairn.syncNow(10_000uL).pending.isEmpty(), "the organiser's thread reached the relay")
        val seen = ThreadSeen()
        val subscription = thread.subscribe(seen)
        seen.until("the organiser's app shows the thread") { it.posts.size == 1 }

        member = Device("member-phone", File(work, "member"))
        val memberWorkspace = member.cairn.workspace()
        val memberPreview = memberWorkspace.previewInvite(relayUrl, invite.link)
        check(memberPreview.groupId == groupId && memberPreview.role == Role.MEMBER, "the member's invite previews")
        val memberEnrolment = memberWorkspace.join(relayUrl, invite.link, "Ana")
        keptThroughKeeper(member, memberEnrolment.credential)
        memberWorkspace.acceptCodeOfConduct(groupId, memberPreview.codeOfConductVersion)
        member.online()
        check(memberWorkspace.groups().any { it.groupId == groupId && it.role == Role.MEMBER }, "the member's groups")

        val memberGroup = member.cairn.group(groupId)
        val memberThread = memberGroup.thread(thread.id())
        waitFor("the thread reaches the member's device") {
            try {
                memberThread.read().posts.isNotEmpty()
            } catch (e: CairnException) {
                false
            }
        }
        val postId = memberThread.post(postText)
        val shown = seen.until("the organiser's app shows the member's post") { r -> r.posts.any { it.id == postId } }
        val post = shown.posts.first { it.id == postId }
        check(post.text == postText, "the post's text arrived whole")
        check(post.author == memberEnrolment.memberId, "the post is the member's")
        check(seen.errors.get() == 0, "no listener errors")
        subscription.cancel()
        subscription.close()
        // Every handle holds the device's store open: closed, as an app lets go of them.
        listOf(memberThread, memberGroup, memberWorkspace, thread, group, workspace).forEach { it.close() }
        check(notKept.isEmpty(), "the credential reached the keystore through the keeper on: $notKept")
    }

    private val notKept = mutableListOf<String>()

    /**
     * The credential a join returned must have come to the keystore through the keeper. If it
     * did not, the story fails at its end; the keystore gets it anyway so the stories after it
     * can run.
     */
    private fun keptThroughKeeper(device: Device, credential: String?) {
        check(credential != null, "a new device's credential")
        if (device.keystore.credentials[relayUrl] != credential || device.keystore.kept.get() != 1) {
            notKept += device.name
            device.keystore.credentials[relayUrl] = credential!!
        }
    }

    /** (1) A member writes two reflections, restarts the app, reads them back; the relay never had them. */
    suspend fun reflectionsSurviveARestart() {
        member.online()
        val journal = member.cairn.journal()
        val ids = reflections.mapIndexed { i, text -> journal.write("Reflection ${i + 1}", null, text, emptyList()) }
        member.cairn.syncNow(10_000uL)
        journal.close()

        member.restart()
        check(member.config().relays.single().credential == member.keystore.credentials[relayUrl], "restarted with the kept credential")
        member.online() // the kept credential still lets the device in
        member.cairn.journal().use { restarted ->
            val listed = restarted.list()
            for ((id, text) in ids.zip(reflections)) {
                val entry = listed.firstOrNull { it.id == id } ?: throw Failure("reflection $id missing after the restart")
                check(entry.body == text, "reflection $id read back whole")
            }
            check(restarted.get(ids[0]).body == reflections[0], "get() reads it too")
        }

        val stored = allBytes(relayData)
        check(stored.isNotEmpty(), "the relay's data directory has files")
        // The search can find content: the member's thread post is in the relay's store.
        check(contains(stored, postText.toByteArray()), "positive control: the post is found in the relay's store")
        for ((i, text) in reflections.withIndex()) {
            check(!contains(stored, text.toByteArray()), "reflection ${i + 1} is not in the relay's store")
        }
    }

    /** (2) Two devices co-edit the minutes, one offline for part of it; both end the same. */
    suspend fun minutesCoEditedOfflineAndBack() {
        val meeting = organiser.cairn.group(groupId).createMeeting("March meeting", MeetingKind.OTHER)
        val a = meeting.minutes()
        check(organiser.cairn.syncNow(10_000uL).pending.isEmpty(), "the meeting reached the relay")
        val b = member.cairn.group(groupId).meeting(meeting.id()).minutes()
        val aSeen = MinutesSeen()
        val bSeen = MinutesSeen()
        val aSub = a.subscribe(aSeen)
        val bSub = b.subscribe(bSeen)
        val start = aSeen.until("the organiser's minutes") { true }.current
        bSeen.until("the member's app shows the minutes") { it.current == start }

        fun firstStart(t: MinutesText) = t.paragraphs.firstOrNull()?.start ?: 0u
        fun secondStart(t: MinutesText) = t.paragraphs.getOrNull(1)?.start ?: t.length
        a.insertText(firstStart(a.read().current), "Alpha welcomes everyone. ")
        b.insertText(firstStart(b.read().current), "Beta takes notes. ")
        for ((who, seen) in listOf("organiser" to aSeen, "member" to bSeen)) {
            seen.until("both edits on the $who's device") {
                it.current.text.contains("Alpha welcomes") && it.current.text.contains("Beta takes")
            }
        }

        // The member loses the network and keeps editing: text, a bold mark, a heading.
        val relays = RelaysSeen()
        val relaysSub = member.cairn.subscribeRelays(relays)
        member.network.setOnline(false)
        relays.until("the member's app shows offline") { s -> s.isNotEmpty() && s.all { it.state != ConnectionState.ONLINE } }
        val offline = "Offline idea from the train. "
        val at = firstStart(b.read().current)
        b.insertText(at, offline)
        b.setBold(at, at + "Offline idea".length.toUInt(), true)
        val end = b.read().current.length
        b.insertParagraph(end, BlockKind.Heading(2u))
        val heading = b.read().current.paragraphs.last()
        check(heading.kind == BlockKind.Heading(2u), "the new paragraph is a heading")
        b.insertText(heading.start, "Decisions")
        val pending = member.cairn.syncNow(300uL)
        check(pending.pending.contains(b.id()), "the offline edits are reported pending, not lost")
        val offlineStatus = b.syncStatus()
        check(
            offlineStatus.state != DocumentSyncState.SAFELY_ON_RELAY && offlineStatus.pendingChanges > 0u,
            "offline, the minutes' status shows changes not on the relay (${offlineStatus.state}, ${offlineStatus.pendingChanges})",
        )
        // Meanwhile the organiser edits too, elsewhere: text typed concurrently right at the
        // start of a bold range can take the bold too (Automerge's mark boundary), which is
        // not what this story is about.
        a.insertText(secondStart(a.read().current), "Meanwhile the room is booked. ")

        member.network.setOnline(true)
        relays.until("the member's app shows online") { s -> s.isNotEmpty() && s.all { it.state == ConnectionState.ONLINE } }
        check(member.cairn.syncNow(10_000uL).pending.isEmpty(), "everything of the member's is on the relay")
        val onlineStatus = b.syncStatus()
        check(
            onlineStatus.state == DocumentSyncState.SAFELY_ON_RELAY && onlineStatus.pendingChanges == 0u,
            "back online, the minutes are safely on the relay (${onlineStatus.state}, ${onlineStatus.pendingChanges})",
        )

        // Both devices converge on the same text, marks and blocks.
        waitFor("both devices show the same minutes") {
            val x = aSeen.last()?.current
            val y = bSeen.last()?.current
            x != null && x == y && x.text.contains("Meanwhile the room") && x.text.contains("Offline idea") &&
                x.paragraphs.any { p -> p.runs.any { it.text.contains("Decisions") } }
        }
        val final = a.read().current
        check(final == b.read().current, "read() agrees with the listeners on both devices")
        check(
            final.paragraphs.any { p -> p.runs.any { it.bold && it.text == "Offline idea" } },
            "the member's bold mark survived the merge",
        )
        check(
            final.paragraphs.any { p -> p.kind == BlockKind.Heading(2u) && p.runs.joinToString("") { it.text } == "Decisions" },
            "the member's heading survived the merge",
        )
        check(aSeen.errors.get() == 0 && bSeen.errors.get() == 0, "no listener errors")

        // Presence: the organiser's selection shows on the member's device, then goes.
        val cursors = CursorsSeen()
        val cursorsSub = b.subscribeCursors(cursors)
        a.setCursor(CursorRecord(anchor = 2u, head = 7u))
        cursors.until("the organiser's selection on the member's device") { c ->
            c.any { it.anchor == 2u && it.head == 7u }
        }
        a.setCursor(null)
        cursors.until("the organiser's selection gone from the member's device") { it.isEmpty() }
        check(cursors.errors.get() == 0, "no cursor listener errors")
        for (s in listOf(aSub, bSub, relaysSub, cursorsSub)) s.cancel()
        val delivered = bSeen.count()
        a.insertText(0u, "After cancel. ")
        waitFor("the edit after cancel reaches the member") { b.read().current.text.contains("After cancel") }
        check(bSeen.count() == delivered, "no callback after cancel")
    }

    /** Typed errors an app branches on. */
    suspend fun typedErrors() {
        val workspace = organiser.cairn.workspace()
        expectError<CairnException.InviteExpired>("joining with a used invite") {
            runBlocking { workspace.join(relayUrl, organiserInvite, "Someone") }
        }
        val bogus = try {
            workspace.join(relayUrl, "cairn://invite/AAAAAAAAAAAAAAAAAAAA", "Someone")
            null
        } catch (e: CairnException) {
            e
        }
        check(
            bogus is CairnException.NotFound || bogus is CairnException.InviteExpired || bogus is CairnException.Invalid,
            "a bogus invite code: ${bogus?.javaClass?.simpleName ?: "no error"}",
        )
        println("     a bogus invite code is ${bogus?.javaClass?.simpleName}")
        expectError<CairnException.Invalid>("a 16-byte journal key") {
            Cairn(
                CairnConfig(File(work, "bad-key").path, emptyList(), ByteArray(16), "Europe/London", null),
                JdkNetwork(),
                Keystore(),
            ).close()
        }
        expectError<CairnException.Invalid>("an unknown time zone") {
            organiser.cairn.setTimeZone("Mars/Olympus_Mons")
        }

        // A credential the relay does not know: the upgrade is refused with 401, which the
        // transport reports as refused and the app shows as the relay's state.
        val network = JdkNetwork()
        val stranger = Cairn(
            CairnConfig(
                File(work, "stranger").path,
                listOf(RelayConfig(relayUrl, "cairn1_" + "0".repeat(16) + "_" + "1".repeat(16) + "_" + "ab".repeat(32))),
                JOURNAL_KEY,
                "Europe/London",
                null,
            ),
            network,
            Keystore(),
        )
        try {
            waitFor("a device with an unknown credential shows Unauthorized") {
                stranger.relays().any { it.state == ConnectionState.UNAUTHORIZED }
            }
            check(network.refusedStatuses.contains(401), "the upgrade was refused with 401: ${network.refusedStatuses}")
        } finally {
            stranger.shutdown()
            stranger.close()
        }
    }
}

fun main(args: Array<String>) {
    if (args.size != 4) {
        System.err.println("usage: StoriesKt RELAY_URL ORGANISER_INVITE RELAY_DATA_DIR WORK_DIR")
        exitProcess(2)
    }
    val run = Run(args[0], args[1], File(args[2]), File(args[3]))
    var passed = 0
    var failed = 0
    val stories: List<Pair<String, suspend () -> Unit>> = listOf(
        "story 3: an invite, a second device joins, accepts the code of conduct, posts; the first sees it" to run::inviteJoinPost,
        "story 1: two reflections survive a restart and never reach the relay" to run::reflectionsSurviveARestart,
        "story 2: two devices co-edit the minutes, one offline for part of it, and agree" to run::minutesCoEditedOfflineAndBack,
        "typed errors: a used or bogus invite, a bad journal key, an unknown zone; a refused upgrade shows Unauthorized" to run::typedErrors,
    )
    runBlocking {
        for ((name, story) in stories) {
            try {
                story()
                passed++
                println("ok   $name")
            } catch (e: Throwable) {
                failed++
                println("FAIL $name: ${e.javaClass.simpleName}: ${e.message}")
            }
        }
        for (device in run.devices()) device.cairn.shutdown()
    }
    for (d in run.devices()) {
        println("     ${d.name}: ${d.network.socketsOpened.get()} sockets opened, ${d.network.pongs.get()} pongs")
    }
    println("$passed passed, $failed failed")
    exitProcess(if (failed == 0) 0 else 1)
}
