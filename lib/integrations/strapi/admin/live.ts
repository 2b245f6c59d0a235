/**
 * One cms-realtime client for the whole admin tab, on the admin's own
 * session: the token hook reads the admin's current JWT (Strapi refreshes
 * it), so the socket is the signed-in admin, with their RBAC.
 */
import { useAuth, type AdminUser } from '@strapi/strapi/admin'
import { useEffect, useState } from 'react'
import { createClient } from '../../../client/create'
import type { ClientState, RealtimeClient } from '../../../client/types'

let token: string | null = null
let client: RealtimeClient | undefined

/** Where the Strapi server is (the admin may be served elsewhere: `window.strapi.backendURL`). */
function backend(): string {
  const url = (globalThis as { strapi?: { backendURL?: string } }).strapi?.backendURL
  return typeof url === 'string' ? url.replace(/\/$/, '') : ''
}

export interface Live {
  rt: RealtimeClient
  /** This admin's id on the channel (`admin:<id>`), as events' `updatedBy` name it. */
  self: string | undefined
  state: ClientState
}

export function useLive(path = '/realtime'): Live {
  const current = useAuth('cms-realtime', (a) => a.token)
  const user = useAuth('cms-realtime', (a) => a.user) as AdminUser | undefined
  token = current
  // Tabs may be different admins, and presence is per tab: each tab its own connection.
  client ??= createClient({ configUrl: `${backend()}${path}/config`, token: () => token, share: false })
  const rt = client
  const [state, setState] = useState<ClientState>(rt.state)
  useEffect(() => rt.on('state', setState), [rt])
  // Signed in again (a new token after `signed-out`): connect at once.
  useEffect(() => {
    if (current !== null && rt.state === 'signed-out') rt.reconnect()
  }, [current, rt])
  return { rt, self: user?.id === undefined ? undefined : `admin:${user.id}`, state }
}

/** What the admin's RTK Query cache calls one document, and a type's list (the Content Manager's tags). */
export const tags = {
  list: (model: string) => ({ type: 'Document', id: `${model}_LIST` }),
  document: (model: string, documentId: string) => ({ type: 'Document', id: `${model}_${documentId}` }),
}
