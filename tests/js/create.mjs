// create.mjs <wsUrl>
// Creates {title, notes (Text), items} on a fresh non-ephemeral repo, waits until the server
// has acknowledged it (getSyncInfo(serverStorageId).lastHeads == heads), then prints
// {"documentId", "url", "heads"} as one JSON line.
import { finish, fail, makeClientRepo, startDeadline, waitAcknowledged } from "./common.mjs"

const [wsUrl] = process.argv.slice(2)
if (!wsUrl) fail("usage: node create.mjs <wsUrl>")

let stage = "waiting for the server's peer message"
startDeadline(() => stage)

const repo = makeClientRepo(wsUrl)
// In @automerge/automerge 3, JS strings are stored as collaborative Text.
const handle = repo.create({ title: "Minutes", notes: "hello from js", items: [1, 2, 3] })
stage = `waiting for the server to acknowledge ${handle.documentId}`
const { heads } = await waitAcknowledged(repo, handle)
finish({ documentId: handle.documentId, url: handle.url, heads })
