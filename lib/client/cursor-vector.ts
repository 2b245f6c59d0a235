/**
 * The SSE `id` of a stream over several topics: one cursor per topic, in the
 * order of the `topics` query parameter, each percent-encoded (cursors are
 * opaque and may contain anything), joined by `,`; an empty entry means "no
 * position yet". `EventSource` sends the last one back as `Last-Event-ID`
 * when it reconnects, so the server can resume every topic exactly.
 *
 *   topics=projects,project:42   id: 3f2a9c01-17,3f2a9c01-15
 */

export function encodeCursors(cursors: ReadonlyArray<string | undefined>): string {
  return cursors.map((c) => (c === undefined ? '' : encodeURIComponent(c))).join(',')
}

/** `null` when `text` is not a vector of `count` cursors of at most `maxLength` characters. */
export function decodeCursors(text: string, count: number, maxLength = 64): Array<string | undefined> | null {
  const parts = text.split(',')
  if (parts.length !== count) return null
  const out: Array<string | undefined> = []
  for (const p of parts) {
    if (p === '') {
      out.push(undefined)
      continue
    }
    let c: string
    try {
      c = decodeURIComponent(p)
    } catch {
      return null
    }
    if (c.length > maxLength) return null
    out.push(c)
  }
  return out
}
