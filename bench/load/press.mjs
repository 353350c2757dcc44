// Shoppers pressing "claim" (or any POST) from one Node.js process, for bench/flash_grab.py
// --client autocannon: a load generator that costs the shared 2-core box far less per request
// than a Python client, so that the servers under test get the cores.
//
//   node bench/load/press.mjs SPEC.json     (prints one JSON object on stdout)
//
// SPEC: {"url", "connections", "presses": a file of "<Authorization>\t<JSON body>" lines, each
// sent exactly once, in the file's order} or {"url", "connections", "amount", "body"} (the
// empty-handler baseline: the same body every time).
import autocannon from 'autocannon'
import { readFileSync } from 'node:fs'
import { performance } from 'node:perf_hooks'

const spec = JSON.parse(readFileSync(process.argv[2], 'utf8'))
const presses = spec.presses
  ? readFileSync(spec.presses, 'utf8').split('\n').filter(Boolean).map((line) => line.split('\t'))
  : null
const amount = presses ? presses.length : spec.amount

let next = 0
let started = 0 // the first press (autocannon's own duration also counts its connecting)
let lastAnswer = 0
let last201 = 0
const outcomes = {} // "201 claimed", "409 sold_out", ...: how many presses were answered so
const coupons = {} // press index -> the coupon_id its 201 carried
const timeline = [] // answers per 250 ms from the first press

function setupRequest (request, context) {
  if (started === 0) started = performance.now()
  const i = next++
  context.i = i
  if (presses && i < presses.length) {
    const [authorization, body] = presses[i]
    request.headers = { ...request.headers, authorization }
    request.body = body
  }
  return request
}

function onResponse (status, body, context) {
  lastAnswer = performance.now()
  const bucket = Math.floor((lastAnswer - started) / 250)
  timeline[bucket] = (timeline[bucket] || 0) + 1
  let outcome = `${status}`
  if (presses) {
    const answer = JSON.parse(body)
    if (status === 201) {
      outcome = '201 claimed'
      coupons[context.i] = answer.coupon_id
      last201 = performance.now()
    } else {
      outcome = `${status} ${answer.code}`
    }
  }
  outcomes[outcome] = (outcomes[outcome] || 0) + 1
}

const result = await autocannon({
  url: spec.url,
  connections: spec.connections,
  amount,
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: spec.body,
  requests: [{ setupRequest, onResponse }]
})

process.stdout.write(JSON.stringify({
  requests: result.requests.total,
  seconds: (lastAnswer - started) / 1000,
  autocannon_seconds: result.duration,
  p50_ms: result.latency.p50,
  p99_ms: result.latency.p99,
  errors: result.errors,
  timeouts: result.timeouts,
  outcomes,
  coupons,
  timeline: Array.from(timeline, (n) => n || 0),
  last_201_s: last201 ? (last201 - started) / 1000 : null
}) + '\n')
