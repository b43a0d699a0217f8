// repo-server.mjs <port> <dataDir>
// A minimal sync server written directly on @automerge/automerge-repo: a `ws` WebSocketServer
// on 127.0.0.1, NodeWSServerAdapter, NodeFSStorageAdapter, and a share policy that never
// announces documents (like the official sync server): clients push theirs, anyone asking by
// id gets it. Prints "listening <port>" once ready.
import fs from "node:fs"
import os from "node:os"
import { WebSocketServer } from "ws"
import { Repo } from "@automerge/automerge-repo"
import { NodeWSServerAdapter } from "@automerge/automerge-repo-network-websocket"
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs"

const [port, dataDir] = process.argv.slice(2)
if (!/^\d+$/.test(port ?? "") || !dataDir) {
  console.error("usage: node repo-server.mjs <port> <dataDir>")
  process.exit(1)
}
fs.mkdirSync(dataDir, { recursive: true })

const wss = new WebSocketServer({ host: "127.0.0.1", port: Number(port) })
wss.on("error", e => {
  console.error(`error: ${e.message}`)
  process.exit(1)
})

const repo = new Repo({
  network: [new NodeWSServerAdapter(wss)],
  storage: new NodeFSStorageAdapter(dataDir),
  peerId: `repo-server-${os.hostname()}`,
  shareConfig: {
    announce: async () => false, // never volunteer documents
    access: async () => true, // answer any request by id
  },
})

wss.on("listening", () => process.stdout.write(`listening ${port}\n`))

const stop = async () => {
  wss.close()
  // Flush only loaded documents (Repo.shutdown() throws on handles left unavailable).
  const ready = Object.values(repo.handles).filter(h => h.isReady())
  try {
    await repo.flush(ready.map(h => h.documentId))
  } catch (e) {
    console.error(`flush failed: ${e.message}`)
  }
  process.exit(0)
}
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
