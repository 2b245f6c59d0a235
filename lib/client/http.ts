/**
 * The client's plain-HTTP calls besides config: trading a token for a
 * ticket, asking what the server saw of a failed handshake, reporting the
 * diagnosis, and reading why an event stream was refused. Each answers
 * with what it learnt; what to do about it is the client's.
 */
import type { Diagnosis, FetchLike } from './types'
import { causeOf, type HandshakeSeen, type StepDownCause } from './wire'

export type TicketResult = { ticket: string } | { signedOut: string } | { failed: true }

/** `POST <path>/ticket` with the app's token (see the README, "tickets"). */
export async function fetchTicket(fetch: FetchLike, url: string, token: () => unknown): Promise<TicketResult> {
  let t: unknown
  try {
    t = await token()
  } catch {
    return { failed: true }
  }
  if (t === null || t === undefined || t === '') return { signedOut: 'no credentials' }
  try {
    const r = await fetch(url, { method: 'POST', headers: { Authorization: `Bearer ${String(t)}` }, cache: 'no-store', credentials: 'same-origin' })
    if (r.status === 401) return { signedOut: 'unauthenticated' }
    const body = r.ok ? ((await r.json()) as { ticket?: unknown }) : {}
    return typeof body.ticket === 'string' ? { ticket: body.ticket } : { failed: true }
  } catch {
    return { failed: true }
  }
}

/** `GET <path>/diagnostics?nonce=`: the diagnosis, and the wait the server asked for, if any. */
export async function askHandshake(fetch: FetchLike, url: string): Promise<{ diagnosis: Diagnosis; retryAfterMs?: number }> {
  try {
    const s = (await (await fetch(url, { cache: 'no-store' })).json()) as HandshakeSeen
    if (s.seen !== 'refused') return { diagnosis: { cause: causeOf(s) } }
    const diagnosis = { cause: causeOf(s), detail: s.reason }
    return s.retryAfterMs === undefined ? { diagnosis } : { diagnosis, retryAfterMs: s.retryAfterMs }
  } catch {
    return { diagnosis: { cause: 'offline' } }
  }
}

/** `POST <path>/diagnostics`, once; `nonce` lets the server count what it saw itself. Fire and forget. */
export function reportDiagnosis(fetch: FetchLike, url: string, d: { cause: Diagnosis['cause'] | StepDownCause }, transport: string, nonce?: string): void {
  fetch(url, {
    method: 'POST',
    body: JSON.stringify({ cause: d.cause, transport, ...(nonce === undefined ? {} : { nonce }) }),
    // text/plain: app body parsers skip it, and it needs no CORS preflight.
    headers: { 'Content-Type': 'text/plain;charset=UTF-8' },
    keepalive: true,
  }).catch(() => {})
}

/** EventSource hides a refused stream's status: one `HEAD` reads it, with its `Retry-After` in ms. `null` offline. */
export async function refusal(fetch: FetchLike, url: string): Promise<{ status: number; retryAfterMs: number } | null> {
  try {
    const r = await fetch(url, { method: 'HEAD', cache: 'no-store', credentials: 'same-origin' })
    return { status: r.status, retryAfterMs: Number(r.headers?.get('Retry-After')) * 1000 }
  } catch {
    return null
  }
}
