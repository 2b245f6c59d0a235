/**
 * A deliberately cheap WebSocket client for the bench's client process: a
 * raw TCP socket, a hand-written upgrade request, and a frame parser that
 * reads headers and skips payloads. It parses no JSON and copies no event
 * payloads, so the client process stays far cheaper than the server it
 * measures. Frames count as events when their payload is at least
 * EVENT_MIN_BYTES long (every event in the bench is ~200 bytes; acks,
 * pings and handshake frames are shorter).
 */
import { connect, type Socket } from 'node:net'

export const EVENT_MIN_BYTES = 100

/** A masked text frame (mask key 0, which the server XORs away like any other). */
export function clientFrame(text: string): Buffer {
  const payload = Buffer.from(text)
  if (payload.length > 125) throw new Error('bench client frames must be short')
  return Buffer.concat([Buffer.from([0x81, 0x80 | payload.length, 0, 0, 0, 0]), payload])
}

export interface WireOptions {
  port: number
  /** Request target, e.g. `/realtime` or `/socket.io/?EIO=4&transport=websocket`. */
  path: string
  protocol?: string
  /** Frames to send once the upgrade succeeded. */
  hello: Buffer[]
  /** The connection is ready after `count` short frames starting with `prefix`; `null`: ready at the 101. */
  ready: { prefix: string; count: number } | null
  /** Short frames equal to `ping` are answered with `pong` (Socket.IO's application-level heartbeat). */
  ping?: { ping: string; pong: Buffer }
  onEvent: () => void
  /** The connection closed after it was ready (e.g. a slow-consumer close). */
  onClose?: () => void
}

const UPGRADE_END = Buffer.from('\r\n\r\n')

/** Open one connection; resolves when it is ready, rejects on anything else. */
export function openWire(o: WireOptions): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(o.port, '127.0.0.1')
    socket.setNoDelay(true)
    let head: Buffer | null = Buffer.alloc(0)
    let ready = false
    let acks = 0
    /** Bytes of the current frame's payload still to skip. */
    let skip = 0
    /** Unparsed bytes (a header split across reads, or a short frame we must read). */
    let rest: Buffer | null = null
    const fail = (err: Error): void => {
      if (ready) return
      socket.destroy()
      reject(err)
    }
    const becomeReady = (): void => {
      if (ready) return
      ready = true
      resolve(socket)
    }
    socket.on('error', fail)
    socket.on('close', () => (ready ? o.onClose?.() : fail(new Error('closed before ready'))))
    socket.on('connect', () => {
      socket.write(
        `GET ${o.path} HTTP/1.1\r\nHost: 127.0.0.1:${o.port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
          `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n` +
          (o.protocol === undefined ? '' : `Sec-WebSocket-Protocol: ${o.protocol}\r\n`) + '\r\n',
      )
    })
    const frames = (chunk: Buffer): void => {
      let buf = rest === null ? chunk : Buffer.concat([rest, chunk])
      rest = null
      let i = 0
      if (skip > 0) {
        const n = Math.min(skip, buf.length)
        skip -= n
        i = n
      }
      while (i < buf.length) {
        if (buf.length - i < 2) break
        let len = buf[i + 1]! & 0x7f
        let hdr = 2
        if (len === 126) {
          if (buf.length - i < 4) break
          len = buf.readUInt16BE(i + 2)
          hdr = 4
        } else if (len === 127) {
          if (buf.length - i < 10) break
          len = Number(buf.readBigUInt64BE(i + 2))
          hdr = 10
        }
        if (len >= EVENT_MIN_BYTES) {
          o.onEvent()
          const avail = buf.length - i - hdr
          if (avail < len) {
            skip = len - avail
            i = buf.length
            continue
          }
          i += hdr + len
          continue
        }
        if (buf.length - i < hdr + len) break // a short frame split across reads: wait for the rest
        const opcode = buf[i]! & 0x0f
        if (opcode === 1) {
          const text = buf.toString('latin1', i + hdr, i + hdr + len)
          if (o.ping !== undefined && text === o.ping.ping) socket.write(o.ping.pong)
          if (!ready && o.ready !== null && text.startsWith(o.ready.prefix) && ++acks === o.ready.count) becomeReady()
        } else if (opcode === 9) {
          socket.write(Buffer.from([0x8a, 0x80, 0, 0, 0, 0])) // pong to a ws-level ping
        } else if (opcode === 8) {
          fail(new Error(`server closed: ${len >= 2 ? buf.readUInt16BE(i + hdr) : 0}`))
        }
        i += hdr + len
      }
      if (i < buf.length) rest = buf.subarray(i)
    }
    socket.on('data', (chunk: Buffer) => {
      if (head === null) return frames(chunk)
      head = Buffer.concat([head, chunk])
      const end = head.indexOf(UPGRADE_END)
      if (end < 0) return
      const status = head.toString('latin1', 0, 12)
      if (status !== 'HTTP/1.1 101') return fail(new Error(`handshake refused: ${head.toString('latin1', 0, 40)}`))
      const after = head.subarray(end + 4)
      head = null
      for (const f of o.hello) socket.write(f)
      if (o.ready === null) becomeReady()
      if (after.length > 0) frames(after)
    })
  })
}
