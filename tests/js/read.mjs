// read.mjs <wsUrl> <documentId|automerge:url>
// Finds the document through the server on a fresh repo and prints {"doc", "heads"} as one JSON line.
import { connectionNote, docJSON, finish, fail, makeClientRepo, startDeadline } from "./common.mjs"

const [wsUrl, documentId] = process.argv.slice(2)
if (!wsUrl || !documentId) fail("usage: node read.mjs <wsUrl> <documentId>")
startDeadline(() => `finding ${documentId}`)

const repo = makeClientRepo(wsUrl)
let handle
try {
  handle = await repo.find(documentId)
} catch (e) {
  fail(`${documentId}: ${e.message}${connectionNote()}`)
}
finish({ doc: docJSON(handle.doc()), heads: handle.heads() })
