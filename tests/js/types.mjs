// types.mjs <wsUrl> <documentId>
// Finds the document and prints, for each root key, how JS automerge 3 sees its value:
// "text" (a collaborative Text, read as a JS string), "immutable-string" (a scalar string),
// or the value's JS type. Lets Rust tests check that co-edited fields are Text for JS clients.
import * as A from "@automerge/automerge"
import { connectionNote, finish, fail, makeClientRepo, startDeadline } from "./common.mjs"

const [wsUrl, documentId] = process.argv.slice(2)
if (!wsUrl || !documentId) fail("usage: node types.mjs <wsUrl> <documentId>")
startDeadline(() => `finding ${documentId}`)

const repo = makeClientRepo(wsUrl)
let handle
try {
  handle = await repo.find(documentId)
} catch (e) {
  fail(`${documentId}: ${e.message}${connectionNote()}`)
}
const doc = handle.doc()
const kinds = {}
for (const [key, value] of Object.entries(doc)) {
  if (typeof value === "string") kinds[key] = "text"
  else if (A.isImmutableString ? A.isImmutableString(value) : value instanceof A.ImmutableString) kinds[key] = "immutable-string"
  else kinds[key] = Array.isArray(value) ? "array" : typeof value
}
finish(kinds)
