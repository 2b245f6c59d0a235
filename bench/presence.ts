/**
 * The presence case: what presence and soft locks cost a CMS.
 *   - memory per present tab on the server: heap after GC with N connected
 *     editors, before and after each is present on an item (and holds its lock);
 *   - traffic of a 200-editor CMS: every editor opens another item every
 *     30 s (leave + unlock, presence + lock on the next one), 2 editors per
 *     item on average; WebSocket bytes both ways, per minute at that pace.
 * In one process (server and `ws` clients): the memory figure is a
 * difference, so the clients' own share cancels out. Run with --expose-gc.
 */
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import WebSocket from 'ws'
import { createRealtime } from '../lib/server/realtime'
import { PROTOCOL } from '../lib/types'

export interface PresenceRun {
  members: number
  /** Server heap per present tab holding a lock, bytes. */
  heapPerMember: number
  editors: number
  /** WebSocket payload bytes per minute, both ways, for `editors` switching item every 30 s. */
  bytesPerMinute: number
  framesPerMinute: number
  /** Time for one switch to show at the other editor on the item (leave → presence frame), median ms. */
  switchP50: number
}

const gc = (): void => { (globalThis as { gc?: () => void }).gc?.(); (globalThis as { gc?: () => void }).gc?.() }

export async function presenceBench(members: number, editors = 200): Promise<PresenceRun> {
  if ((globalThis as { gc?: unknown }).gc === undefined) throw new Error('run with node --expose-gc')
  const rt = createRealtime({ authenticate: (req) => ({ id: String(req.headers['x-user']) }), maxConnectionsPerUser: 1_000_000 })
  const server = createServer((req, res) => { if (!rt.handleRequest(req, res)) res.writeHead(404).end() })
  rt.attach(server)
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const port = (server.address() as AddressInfo).port
  let bytes = 0
  let frames = 0
  const open = async (user: string): Promise<WebSocket> => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/realtime`, PROTOCOL, { headers: { 'x-user': user } })
    ws.on('message', (d: Buffer) => { bytes += d.length; frames++ })
    await new Promise((r, j) => { ws.once('open', r); ws.once('error', j) })
    return ws
  }
  const send = (ws: WebSocket, frame: object): void => {
    const text = JSON.stringify(frame)
    bytes += text.length
    frames++
    ws.send(text)
  }
  const settle = (ms = 300) => new Promise((r) => setTimeout(r, ms))
  try {
    // Memory: N connections, then each present on an item of its own and holding its lock.
    const socks: WebSocket[] = []
    for (let i = 0; i < members; i += 100) {
      socks.push(...(await Promise.all(Array.from({ length: Math.min(100, members - i) }, (_, k) => open(`u${i + k}`)))))
    }
    await settle()
    gc()
    const before = process.memoryUsage().heapUsed
    socks.forEach((ws, i) => {
      send(ws, { op: 'presence', topic: `item:${i}`, tab: `tab-${i}-xxxxxxxx`, meta: { field: 'title' } })
      send(ws, { op: 'lock', key: `item:${i}`, tab: `tab-${i}-xxxxxxxx` })
    })
    await settle(1000)
    gc()
    const heapPerMember = (process.memoryUsage().heapUsed - before) / members
    for (const ws of socks) ws.terminate()
    await settle(500)

    // Traffic: `editors` editors on editors/2 items; each switches item once (what 30 s of a CMS does).
    const items = Math.max(1, editors / 2)
    const eds = await Promise.all(Array.from({ length: editors }, (_, i) => open(`editor${i}`)))
    const at = eds.map((_, i) => i % items)
    eds.forEach((ws, i) => {
      send(ws, { op: 'presence', topic: `item:${at[i]}`, tab: `tab-${i}-xxxxxxxx`, meta: null })
      send(ws, { op: 'lock', key: `item:${at[i]}`, tab: `tab-${i}-xxxxxxxx` })
    })
    await settle(1000)
    bytes = 0
    frames = 0
    const lat: number[] = []
    const t0 = Date.now()
    for (let i = 0; i < editors; i++) {
      const ws = eds[i]!
      const from = at[i]!
      const to = (from + 1 + (i % 7)) % items
      // Someone else present on the item being left sees the change.
      const watcher = eds.find((_, j) => j !== i && at[j] === from)
      const seen = watcher === undefined ? null : new Promise<void>((resolve) => {
        const on = (d: Buffer): void => {
          const f = JSON.parse(String(d)) as { op: string; topic?: string }
          if (f.op === 'presence' && f.topic === `item:${from}`) { watcher.off('message', on); resolve() }
        }
        watcher.on('message', on)
      })
      const s0 = performance.now()
      send(ws, { op: 'unlock', key: `item:${from}` })
      send(ws, { op: 'leave', topic: `item:${from}` })
      send(ws, { op: 'presence', topic: `item:${to}`, tab: `tab-${i}-xxxxxxxx`, meta: null })
      send(ws, { op: 'lock', key: `item:${to}`, tab: `tab-${i}-xxxxxxxx` })
      at[i] = to
      if (seen !== null) {
        await seen
        lat.push(performance.now() - s0)
      }
    }
    await settle(500)
    void t0
    lat.sort((a, b) => a - b)
    // One switch per editor is what 30 s holds: twice that per minute.
    const run = { members, heapPerMember, editors, bytesPerMinute: bytes * 2, framesPerMinute: frames * 2, switchP50: lat[lat.length >> 1] ?? 0 }
    for (const ws of eds) ws.terminate()
    return run
  } finally {
    await rt.close(100)
    server.close()
  }
}

export function presenceLines(run: PresenceRun): string[] {
  return [
    `presence: ${Math.round(run.heapPerMember)} B of server heap per present tab holding a lock (${run.members} tabs, memory store)`,
    `presence: a ${run.editors}-editor CMS (each opening another item every 30 s, ~2 editors per item): ` +
      `${(run.bytesPerMinute / 1024).toFixed(0)} KiB/min and ${run.framesPerMinute} frames/min over WebSockets, both ways; ` +
      `a switch shows to the other editor in ${run.switchP50.toFixed(1)} ms (median). Idle presence costs no frames: liveness is the WebSocket's own ping every 25 s.`,
  ]
}

if (require.main === module) {
  const n = Number(process.argv[2] ?? 2000)
  presenceBench(n).then((r) => console.log(presenceLines(r).join('\n')), (err: unknown) => { console.error(err); process.exit(1) })
}
