/**
 * The bench's cheap SSE client: a raw TCP socket, a hand-written GET of
 * `<path>/events?topics=…`, and a scan of the body that counts event
 * messages without parsing them. Each message is one `res.write` on the
 * server, so one chunk of the chunked body: the marker below is never split
 * by chunk framing, only (rarely) by a TCP read, which the carried tail covers.
 */
import { connect, type Socket } from 'node:net'

const EVENT = Buffer.from('data: {"op":"event"')
const SUBSCRIBED = Buffer.from('data: {"op":"subscribed"')
const HEAD_END = Buffer.from('\r\n\r\n')

export interface SseWireOptions {
  port: number
  /** Request target, e.g. `/realtime/events?topics=all`. */
  path: string
  /** Ready once this many `subscribed` messages arrived (one per topic). */
  topics: number
  onEvent: () => void
  onClose?: () => void
}

/** Matches of `marker` in `buf` that end after byte `seen` (those ending before were counted already). */
function count(buf: Buffer, marker: Buffer, seen: number): number {
  let n = 0
  for (let i = buf.indexOf(marker); i >= 0; i = buf.indexOf(marker, i + marker.length)) if (i + marker.length > seen) n++
  return n
}

/** Open one stream; resolves once every topic is subscribed, rejects on anything else. */
export function openSse(o: SseWireOptions): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(o.port, '127.0.0.1')
    socket.setNoDelay(true)
    let head: Buffer | null = Buffer.alloc(0)
    let ready = false
    let acks = 0
    /** The last bytes of the previous read, so a marker split across reads still counts once. */
    let tail = Buffer.alloc(0)
    const fail = (err: Error): void => {
      if (ready) return
      socket.destroy()
      reject(err)
    }
    socket.on('error', fail)
    socket.on('close', () => (ready ? o.onClose?.() : fail(new Error('closed before ready'))))
    socket.on('connect', () => {
      socket.write(`GET ${o.path} HTTP/1.1\r\nHost: 127.0.0.1:${o.port}\r\nAccept: text/event-stream\r\n\r\n`)
    })
    const body = (chunk: Buffer): void => {
      const buf = tail.length === 0 ? chunk : Buffer.concat([tail, chunk])
      const events = count(buf, EVENT, tail.length)
      for (let k = 0; k < events; k++) o.onEvent()
      if (!ready) {
        acks += count(buf, SUBSCRIBED, tail.length)
        if (acks >= o.topics) {
          ready = true
          resolve(socket)
        }
      }
      tail = Buffer.from(buf.subarray(Math.max(0, buf.length - (SUBSCRIBED.length - 1))))
    }
    socket.on('data', (chunk: Buffer) => {
      if (head === null) return body(chunk)
      head = Buffer.concat([head, chunk])
      const end = head.indexOf(HEAD_END)
      if (end < 0) return
      const status = head.toString('latin1', 0, 12)
      if (status !== 'HTTP/1.1 200') return fail(new Error(`stream refused: ${head.toString('latin1', 0, 40)}`))
      const after = head.subarray(end + 4)
      head = null
      if (after.length > 0) body(after)
    })
  })
}
