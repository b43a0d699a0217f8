// The host's network for the Kotlin bindings, on the JDK's java.net.http (what an Android app
// does with OkHttp): a websocket per relay connection and one-shot HTTP requests. Every call
// returns at once and reports through the Rust callback objects. A switch per device
// simulates losing the network.
package cairn.stories

import java.io.ByteArrayOutputStream
import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpHeaders
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.net.http.WebSocket
import java.net.http.WebSocketHandshakeException
import java.nio.ByteBuffer
import java.time.Duration
import java.util.concurrent.CompletableFuture
import java.util.concurrent.CompletionException
import java.util.concurrent.CompletionStage
import java.util.concurrent.ConcurrentHashMap
import java.util.concurrent.atomic.AtomicInteger
import uniffi.cairn.HttpReply
import uniffi.cairn.NetworkRequest
import uniffi.cairn.PlatformNetwork
import uniffi.cairn.PlatformSocket
import uniffi.cairn.SocketEvents

/** `Retry-After` in seconds, if the answer has one. */
internal fun retryAfter(headers: HttpHeaders): ULong? =
    headers.firstValue("retry-after").orElse(null)?.trim()?.toULongOrNull()

/** The cause a CompletableFuture wrapped. */
internal fun unwrap(e: Throwable): Throwable =
    if (e is CompletionException && e.cause != null) e.cause!! else e

class JdkNetwork : PlatformNetwork {
    private val client: HttpClient = HttpClient.newBuilder()
        .version(HttpClient.Version.HTTP_1_1)
        .connectTimeout(Duration.ofSeconds(10))
        .build()
    private val sockets = ConcurrentHashMap.newKeySet<JdkSocket>()

    @Volatile
    var online = true
        private set

    /** Pongs the relay sent (the client's keepalive pings answered). */
    val pongs = AtomicInteger()
    val socketsOpened = AtomicInteger()

    /** HTTP statuses that refused a websocket upgrade (401 for a bad credential…). */
    val refusedStatuses = java.util.concurrent.ConcurrentLinkedQueue<Int>()

    /** Off: open sockets drop, new ones and HTTP requests are unreachable. */
    fun setOnline(on: Boolean) {
        online = on
        if (!on) sockets.toList().forEach { it.lose("network off") }
    }

    internal fun forget(socket: JdkSocket) {
        sockets.remove(socket)
    }

    override fun openSocket(url: String, bearer: String?, events: SocketEvents): PlatformSocket {
        val socket = JdkSocket(this, events)
        if (!online) {
            socket.lose("network off")
            return socket
        }
        sockets.add(socket)
        val builder = client.newWebSocketBuilder().connectTimeout(Duration.ofSeconds(10))
        if (bearer != null) builder.header("Authorization", "Bearer $bearer")
        builder.buildAsync(URI.create(url), socket.listener).whenComplete { ws, err -> socket.dialed(ws, err) }
        return socket
    }

    override fun httpRequest(request: NetworkRequest, reply: HttpReply) {
        if (!online) {
            reply.unreachable("network off")
            return
        }
        val body = request.jsonBody
        val builder = try {
            HttpRequest.newBuilder(URI.create(request.url))
                .timeout(Duration.ofSeconds(30))
                .method(
                    request.method,
                    if (body != null) HttpRequest.BodyPublishers.ofByteArray(body)
                    else HttpRequest.BodyPublishers.noBody(),
                )
        } catch (e: IllegalArgumentException) {
            reply.unreachable("bad request: ${e.javaClass.simpleName}")
            return
        }
        if (body != null) builder.header("Content-Type", "application/json")
        request.bearer?.let { builder.header("Authorization", "Bearer $it") }
        client.sendAsync(builder.build(), HttpResponse.BodyHandlers.ofByteArray()).whenComplete { response, err ->
            if (err != null || response == null) {
                reply.unreachable(unwrap(err ?: IllegalStateException("no response")).javaClass.simpleName)
            } else {
                reply.respond(response.statusCode().toUShort(), retryAfter(response.headers()), response.body())
            }
        }
    }
}

/**
 * One websocket. The JDK forbids a send while another is incomplete, so sends (and pings)
 * are chained one after another; binary messages arrive in parts and are reassembled.
 */
class JdkSocket(private val network: JdkNetwork, private val events: SocketEvents) : PlatformSocket {
    private enum class State { DIALING, OPEN, ENDED }

    private val lock = Any()
    private var state = State.DIALING
    private var ws: WebSocket? = null
    private val ready = CompletableFuture<WebSocket>()
    private var tail: CompletableFuture<WebSocket> = ready
    private val parts = ByteArrayOutputStream()

    val listener = object : WebSocket.Listener {
        override fun onOpen(webSocket: WebSocket) {
            val open = synchronized(lock) {
                if (state == State.DIALING) {
                    state = State.OPEN
                    ws = webSocket
                    true
                } else false
            }
            if (open) {
                network.socketsOpened.incrementAndGet()
                events.opened()
                ready.complete(webSocket)
                webSocket.request(1)
            } else {
                webSocket.abort()
            }
        }

        override fun onBinary(webSocket: WebSocket, data: ByteBuffer, last: Boolean): CompletionStage<*>? {
            val bytes = ByteArray(data.remaining())
            data.get(bytes)
            val whole = synchronized(lock) {
                parts.write(bytes)
                if (last) parts.toByteArray().also { parts.reset() } else null
            }
            if (whole != null && isOpen()) events.frame(whole)
            webSocket.request(1)
            return null
        }

        override fun onText(webSocket: WebSocket, data: CharSequence, last: Boolean): CompletionStage<*>? {
            webSocket.request(1) // the relay speaks binary only
            return null
        }

        override fun onPong(webSocket: WebSocket, message: ByteBuffer): CompletionStage<*>? {
            network.pongs.incrementAndGet()
            if (isOpen()) events.pong()
            webSocket.request(1)
            return null
        }

        override fun onClose(webSocket: WebSocket, statusCode: Int, reason: String): CompletionStage<*>? {
            end()
            return null
        }

        override fun onError(webSocket: WebSocket, error: Throwable) {
            end()
        }
    }

    private fun isOpen() = synchronized(lock) { state == State.OPEN }

    /** The dial's outcome: an answer to the upgrade other than 101 is `refused`. */
    internal fun dialed(webSocket: WebSocket?, err: Throwable?) {
        if (err == null) return // onOpen already reported it
        val cause = unwrap(err)
        val wasDialing = synchronized(lock) {
            (state == State.DIALING).also { if (it) state = State.ENDED }
        }
        network.forget(this)
        ready.completeExceptionally(cause)
        if (!wasDialing) return
        if (cause is WebSocketHandshakeException) {
            val response = cause.response
            network.refusedStatuses.add(response.statusCode())
            events.refused(response.statusCode().toUShort(), retryAfter(response.headers()))
        } else {
            events.unreachable(cause.javaClass.simpleName)
        }
    }

    /** The network went away: a dial is unreachable, an open socket closes. */
    internal fun lose(reason: String) {
        val was = synchronized(lock) { state.also { state = State.ENDED } }
        network.forget(this)
        ready.thenAccept { it.abort() }
        ws?.abort()
        when (was) {
            State.DIALING -> events.unreachable(reason)
            State.OPEN -> events.closed()
            State.ENDED -> {}
        }
    }

    /** Reports `closed()` once, whoever ends it. */
    private fun end() {
        // While dialing, the dial's outcome (dialed) reports; only an open socket closes.
        val was = synchronized(lock) { state.also { if (it == State.OPEN) state = State.ENDED } }
        if (was != State.OPEN) return
        network.forget(this)
        ws?.abort()
        events.closed()
    }

    private fun enqueue(op: (WebSocket) -> CompletableFuture<WebSocket>) {
        synchronized(lock) {
            if (state == State.ENDED) return
            val next = tail.thenCompose(op)
            next.whenComplete { _, err -> if (err != null) end() }
            tail = next
        }
    }

    override fun send(frame: ByteArray) = enqueue { it.sendBinary(ByteBuffer.wrap(frame), true) }

    override fun ping() = enqueue { it.sendPing(ByteBuffer.allocate(0)) }

    override fun disconnect() {
        val dialing = synchronized(lock) { state == State.DIALING }
        if (dialing) {
            lose("closed by the client")
        } else {
            end()
        }
    }
}
