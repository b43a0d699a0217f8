// sync-server-launcher.mjs <port> <dataDir>
// Runs the official @automerge/automerge-repo-sync-server (its Server class, unchanged) but
// bound to 127.0.0.1: the package calls express `app.listen(PORT, cb)`, which listens on all
// interfaces, so http.Server.prototype.listen is patched to add the loopback host first.
// The server runs on its own declared dependencies (automerge-repo 1.x, nested under its
// node_modules), exactly as published; their versions are printed to stderr.
// Prints "listening <port>" once ready.
import fs from "node:fs"
import http from "node:http"
import path from "node:path"
import { createRequire } from "node:module"

const [port, dataDir] = process.argv.slice(2)
if (!/^\d+$/.test(port ?? "") || !dataDir) {
  console.error("usage: node sync-server-launcher.mjs <port> <dataDir>")
  process.exit(1)
}

const listen = http.Server.prototype.listen
http.Server.prototype.listen = function (...args) {
  // listen(port, cb) -> listen(port, "127.0.0.1", cb)
  if (typeof args[0] === "number" || typeof args[0] === "string") {
    if (typeof args[1] !== "string") args.splice(1, 0, "127.0.0.1")
  } else if (args[0] && typeof args[0] === "object") {
    args[0] = { ...args[0], host: "127.0.0.1" }
  }
  return listen.apply(this, args)
}

// The server reads its configuration from the environment at construction time.
process.env.PORT = port
process.env.DATA_DIR = dataDir
const origLog = console.log
console.log = (...a) => console.error(...a) // its own "Listening on port" goes to stderr
const { Server } = await import("@automerge/automerge-repo-sync-server/src/server.js")
process.stderr.write(`sync server dependencies: ${serverDependencyVersions()}\n`)
const server = new Server()
await server.ready()
console.log = origLog
process.stdout.write(`listening ${port}\n`)

/** The versions Node resolves for the server's automerge packages (nearest node_modules first). */
function serverDependencyVersions() {
  const require = createRequire(import.meta.url)
  const serverDir = path.dirname(require.resolve("@automerge/automerge-repo-sync-server/package.json"))
  return ["@automerge/automerge-repo", "@automerge/automerge"]
    .map(name => {
      for (let dir = serverDir; ; dir = path.dirname(dir)) {
        const file = path.join(dir, "node_modules", name, "package.json")
        if (fs.existsSync(file)) return `${name}@${JSON.parse(fs.readFileSync(file, "utf8")).version}`
        if (path.dirname(dir) === dir) return `${name}@?`
      }
    })
    .join(", ")
}

const stop = () => {
  server.close()
  process.exit(0)
}
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
