// live.mjs <wsUrl> <documentId> write <text>
//   appends <text> to the Text `notes` with Automerge.splice, waits until the server has
//   acknowledged the change, prints {"heads"} as one JSON line.
// live.mjs <wsUrl> <documentId> watch <substring>
//   waits (listening to change events) until `notes` contains <substring>,
//   prints {"doc", "heads"} as one JSON line.
import * as A from "@automerge/automerge"
import { connectionNote, docJSON, finish, fail, makeClientRepo, startDeadline, waitAcknowledged } from "./common.mjs"

const [wsUrl, documentId, mode, arg] = process.argv.slice(2)
if (!wsUrl || !documentId || !["write", "watch"].includes(mode) || arg === undefined) {
  fail("usage: node live.mjs <wsUrl> <documentId> write <text> | watch <substring>")
}

let stage = `finding ${documentId}`
startDeadline(() => stage)

const repo = makeClientRepo(wsUrl)
let handle
try {
  handle = await repo.find(documentId)
} catch (e) {
  fail(`${documentId}: ${e.message}${connectionNote()}`)
}

if (mode === "write") {
  handle.change(d => {
    A.splice(d, ["notes"], (d.notes ?? "").length, 0, arg)
  })
  stage = `waiting for the server to acknowledge the write to ${documentId}`
  const { heads } = await waitAcknowledged(repo, handle)
  finish({ heads })
} else {
  stage = `waiting for notes to contain ${JSON.stringify(arg)}`
  const check = () => {
    const doc = handle.doc()
    if (typeof doc?.notes === "string" && doc.notes.includes(arg)) {
      finish({ doc: docJSON(doc), heads: handle.heads() })
      return true
    }
    return false
  }
  if (!check()) {
    handle.on("change", check)
    process.stderr.write("watching\n")
  }
}
