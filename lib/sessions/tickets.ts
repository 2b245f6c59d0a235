/**
 * Connection tickets: how a browser that holds a bearer token (Strapi's
 * admin and users-permissions JWTs, Directus, Payload) opens a WebSocket or
 * an EventSource, neither of which can send `Authorization`.
 *
 *   POST <path>/ticket   Authorization: Bearer <token>   → {"ticket":"…","expiresInMs":30000}
 *   GET  <path>?ticket=… (upgrade)  or  GET <path>/events?ticket=…
 *
 * At the door (the `upgrade` listener, the first `request` listener) the
 * ticket is turned back into the `Authorization` header it was minted from,
 * before the app's middleware runs: the app's own auth, and `authenticate`,
 * see exactly what a non-browser client sends.
 *
 * Why a ticket, rather than the token in the query (SignalR's
 * `access_token`) or a first message (Directus's `auth`, Centrifugo's
 * `connect`): a URL ends up in access logs, and a first message cannot
 * exist on Server-Sent Events, which have no client-to-server channel. The
 * ticket is the token sealed with AES-256-GCM: a logged ticket reveals
 * nothing, is refused once used on that node, and is dead after `ttlMs`.
 * It is stateless, so any node that shares the key redeems it (the POST
 * and the connection may land on different nodes); with the default,
 * per-process key, only the node that minted it does.
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto'

export type Redeemed = { ok: true; authorization: string } | { ok: false; why: string }

const IV = 12
const TAG = 16

export class Tickets {
  private readonly key: Buffer
  /** Redeemed tickets (by IV) until they expire: a replay on this node is refused. */
  private readonly used = new Map<string, number>()

  constructor(secret: string | Uint8Array | undefined, readonly ttlMs: number) {
    this.key = secret === undefined
      ? randomBytes(32)
      : Buffer.from(hkdfSync('sha256', secret, 'cms-realtime', 'ticket v1', 32))
  }

  /** Seal an `Authorization` header value into a ticket. */
  mint(authorization: string, now = Date.now()): string {
    const iv = randomBytes(IV)
    const cipher = createCipheriv('aes-256-gcm', this.key, iv)
    const body = Buffer.concat([cipher.update(JSON.stringify({ a: authorization, e: now + this.ttlMs }), 'utf8'), cipher.final()])
    return Buffer.concat([iv, body, cipher.getAuthTag()]).toString('base64url')
  }

  /** Open a ticket once: the header it carries, or why not. */
  redeem(ticket: string, now = Date.now()): Redeemed {
    const raw = Buffer.from(ticket, 'base64url')
    if (raw.length <= IV + TAG || raw.length > 16_384) return { ok: false, why: 'malformed ticket' }
    let claims: { a?: unknown; e?: unknown }
    try {
      const decipher = createDecipheriv('aes-256-gcm', this.key, raw.subarray(0, IV))
      decipher.setAuthTag(raw.subarray(raw.length - TAG))
      const text = Buffer.concat([decipher.update(raw.subarray(IV, raw.length - TAG)), decipher.final()]).toString('utf8')
      claims = JSON.parse(text) as typeof claims
    } catch {
      // A wrong key (another deployment, a restarted node with the default key) or a forgery.
      return { ok: false, why: 'ticket not valid here' }
    }
    if (typeof claims.a !== 'string' || typeof claims.e !== 'number') return { ok: false, why: 'malformed ticket' }
    if (claims.e <= now) return { ok: false, why: 'ticket expired' }
    const id = raw.subarray(0, IV).toString('base64url')
    if (this.used.has(id)) return { ok: false, why: 'ticket already used' }
    this.sweep(now)
    this.used.set(id, claims.e)
    return { ok: true, authorization: claims.a }
  }

  /** Forget redeemed tickets that have expired anyway (amortised: only when the map has grown). */
  private sweep(now: number): void {
    if (this.used.size < 256 || (this.used.size & 255) !== 0) return
    for (const [id, expires] of this.used) if (expires <= now) this.used.delete(id)
  }
}

/** The `ticket` query parameter of a request target, if any. */
export function ticketOf(url: string | undefined): string | undefined {
  const q = url?.indexOf('?') ?? -1
  if (q < 0) return undefined
  return new URLSearchParams(url!.slice(q + 1)).get('ticket') ?? undefined
}
