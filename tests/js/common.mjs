// Shared helpers for the interop client programs (create.mjs, read.mjs, live.mjs).
import fs from "node:fs"
import os from "node:os"
import path from "node:path"
import util from "node:util"
import { Repo, cbor } from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs"

export const TIMEOUT_MS = 30_000

let tempDir
let currentRepo

/** " (never got a `peer` message from the server)" if no server peer has connected yet. */
export function connectionNote() {
  const peers = currentRepo ? Object.keys(currentRepo.peerMetadataByPeerId) : []
  return peers.length ? "" : " (never got a `peer` message from the server)"
}

function cleanup() {
  if (tempDir) {
    try {
      fs.rmSync(tempDir, { recursive: true, force: true })
    } catch {}
    tempDir = undefined
  }
}

/** Print an error to stderr and exit 1. */
export function fail(message) {
  process.stderr.write(`error: ${message}\n`)
  cleanup()
  process.exit(1)
}

/** Print one line of JSON to stdout and exit 0. */
let finished = false
export function finish(value) {
  if (finished) return
  finished = true
  process.stdout.write(JSON.stringify(value) + "\n", () => {
    cleanup()
    process.exit(0)
  })
}

/** Fail with `what` if the program has not finished within TIMEOUT_MS. */
export function startDeadline(what) {
  setTimeout(
    () => fail(`timed out after ${TIMEOUT_MS / 1000} s ${what()}${connectionNote()}`),
    TIMEOUT_MS,
  ).unref?.()
}

process.on("uncaughtException", e => fail(e?.stack ?? String(e)))
process.on("unhandledRejection", e => fail(e?.stack ?? String(e)))

// --- optional wire log (CAIRN_WIRE_LOG=1): every frame, decoded, to stderr ---

function describe(message) {
  const out = {}
  for (const key of Object.keys(message)) {
    const v = message[key]
    out[key] = v instanceof Uint8Array ? `<${v.byteLength} bytes>` : v
  }
  return util.inspect(out, { depth: 5, breakLength: Infinity })
}

class LoggingWebSocketClientAdapter extends WebSocketClientAdapter {
  send(message) {
    // Log what actually goes on the wire: encode as the adapter does, decode back.
    const frame = cbor.encode(message)
    process.stderr.write(`wire >> ${describe(cbor.decode(frame))} (${frame.byteLength} B)\n`)
    return super.send(message)
  }
  receiveMessage(messageBytes) {
    try {
      const frame = new Uint8Array(messageBytes)
      process.stderr.write(`wire << ${describe(cbor.decode(frame))} (${frame.byteLength} B)\n`)
    } catch (e) {
      process.stderr.write(`wire << undecodable frame: ${e}\n`)
    }
    return super.receiveMessage(messageBytes)
  }
}

/**
 * A fresh, non-ephemeral Repo: NodeFS storage in a new temp dir (so it has a storageId)
 * and one websocket client connection to wsUrl.
 */
export function makeClientRepo(wsUrl) {
  if (!/^wss?:\/\//.test(wsUrl ?? "")) fail(`not a websocket url: ${wsUrl}`)
  tempDir = fs.mkdtempSync(path.join(os.tmpdir(), "cairn-js-"))
  const Adapter = process.env.CAIRN_WIRE_LOG
    ? LoggingWebSocketClientAdapter
    : WebSocketClientAdapter
  // A relay with membership binds each socket to its device's peer id (`member/device`);
  // an app passes it to Repo as any automerge-repo app chooses its peer id.
  const peerId = process.env.CAIRN_PEER_ID || undefined
  currentRepo = new Repo({
    storage: new NodeFSStorageAdapter(tempDir),
    network: [new Adapter(wsUrl)],
    ...(peerId ? { peerId } : {}),
  })
  return currentRepo
}

const sleep = ms => new Promise(r => setTimeout(r, ms))

/** The storageId the server announced in its `peer` message (peerMetadata.storageId). */
export async function serverStorageId(repo) {
  for (;;) {
    for (const meta of Object.values(repo.peerMetadataByPeerId)) {
      if (meta?.storageId) return meta.storageId
    }
    await sleep(20)
  }
}

function sameHeads(a, b) {
  if (!a || !b || a.length !== b.length) return false
  const s = new Set(a)
  return b.every(h => s.has(h))
}

/**
 * Resolve once the server (by storageId) has shown, in a sync message, that it has every
 * change of this handle: getSyncInfo(storageId).lastHeads equals handle.heads().
 */
export async function waitAcknowledged(repo, handle) {
  const storageId = await serverStorageId(repo)
  for (;;) {
    if (sameHeads(handle.getSyncInfo(storageId)?.lastHeads, handle.heads())) {
      return { storageId, heads: handle.heads() }
    }
    await new Promise(resolve => {
      const t = setTimeout(done, 50)
      function done() {
        clearTimeout(t)
        handle.off("remote-heads", done)
        resolve()
      }
      handle.on("remote-heads", done)
    })
  }
}

/** A document as plain JSON (Text becomes a string). */
export function docJSON(doc) {
  return JSON.parse(JSON.stringify(doc))
}
