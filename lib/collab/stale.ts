/**
 * The stale-edit check for the save path: the editor sends the revision it
 * opened; if the item moved on since, answer 409 with who changed it, and
 * the UI can say "changed by Ben since you opened it" even when its socket
 * was down or the change came through another API.
 */
export interface Revisioned {
  revision: number
  updatedBy?: string
  updatedAt?: string | number
}

export interface StaleAnswer {
  status: 409
  body: { error: 'stale'; message: string; revision: number; updatedBy?: string; updatedAt?: string | number }
}

/** `null` when `opened` is the current revision (save it); otherwise the 409 to send. */
export function staleEdit(current: Revisioned, opened: unknown): StaleAnswer | null {
  const base = typeof opened === 'string' && opened.trim() !== '' ? Number(opened) : opened
  if (base === current.revision) return null
  const who = current.updatedBy === undefined ? 'someone else' : current.updatedBy
  return {
    status: 409,
    body: {
      error: 'stale',
      message: `changed by ${who} since you opened it (revision ${current.revision}, yours ${String(opened)})`,
      revision: current.revision,
      ...(current.updatedBy === undefined ? {} : { updatedBy: current.updatedBy }),
      ...(current.updatedAt === undefined ? {} : { updatedAt: current.updatedAt }),
    },
  }
}
