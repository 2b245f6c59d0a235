/**
 * What collaboration knows of a tab's connection, the locks it serves, the
 * public id of a tab, and the checks still in flight for a request (so a
 * `reauthorize` or an `unlock` that lands meanwhile wins over their verdict).
 */
import { createHash } from 'node:crypto'
import type { ServerFrame } from '../client/wire'
import type { User } from '../types'

/** A WebSocket connection, as presence sees it. */
export interface Participant {
  readonly user: User
  /** Still open: a request whose checks were awaited past its socket's end must leave nothing behind. */
  readonly open: boolean
  send(frame: ServerFrame): void
  /** A frame encoded once for every recipient. */
  sendEncoded(frame: Buffer): void
}

/** One request's checks in flight (see `checking`): withdrawn by `reauthorize`, or given up by the client's `unlock`. */
export interface Check {
  kind: 'presence' | 'lock'
  withdrawn: false | 'revoked' | 'released'
  done(): void
}

export interface Held {
  tab: string
  /** `null` during the grace after its socket dropped. */
  by: Participant | null
  timer?: NodeJS.Timeout
}

/**
 * The id others see for a tab: a hash of the user and the tab's own id. The
 * client's own id never leaves the server, so nobody can pose as another's
 * tab (take its lock back as "the same tab", or overwrite its presence)
 * from what presence frames show; and the same tab of the same user maps to
 * the same id on every node.
 */
export function publicTab(user: string, ownTab: string): string {
  return createHash('sha256').update(`${user}\n${ownTab}`).digest('base64url').slice(0, 16)
}

/**
 * Presence and lock requests whose checks (`authorize`, `canLock`, the
 * store) are being awaited, by participant and name: until `done()`,
 * `reauthorize` sees the name (`names`) and can withdraw it, so an answer
 * that predates the change cannot let it in.
 */
export class InFlight {
  private readonly checks = new Map<Participant, Map<string, Set<Check>>>()

  begin(p: Participant, name: string, kind: Check['kind']): Check {
    let byName = this.checks.get(p)
    if (byName === undefined) this.checks.set(p, (byName = new Map()))
    let set = byName.get(name)
    if (set === undefined) byName.set(name, (set = new Set()))
    const checks = this.checks
    const check: Check = {
      kind,
      withdrawn: false,
      done() {
        set.delete(check)
        if (set.size > 0) return
        byName.delete(name)
        if (byName.size === 0) checks.delete(p)
      },
    }
    set.add(check)
    return check
  }

  /** Withdraw `p`'s requests for `name` (only those of `kind`, if given); true if there were any. */
  withdraw(p: Participant, name: string, why: 'revoked' | 'released', kind?: Check['kind']): boolean {
    let any = false
    for (const c of this.checks.get(p)?.get(name) ?? []) {
      if (kind !== undefined && c.kind !== kind) continue
      if (c.withdrawn === false) c.withdrawn = why
      any = true
    }
    return any
  }

  names(p: Participant): string[] {
    const byName = this.checks.get(p)
    return byName === undefined ? [] : [...byName.keys()]
  }
}
