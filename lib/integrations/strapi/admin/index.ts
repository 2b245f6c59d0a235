/**
 * The live Content Manager, for a Strapi 5 app's `src/admin/app.tsx`:
 *
 *   import { liveAdmin } from 'cms-realtime/strapi-admin'
 *   const live = liveAdmin()
 *   export default { bootstrap(app) { live.bootstrap(app) } }
 *
 * Through the Content Manager's own extension APIs (Strapi 5):
 * `injectComponent('listView', 'actions')` for the live list,
 * `addEditViewSidePanel` for presence, the lock and the stale warning, and
 * `addDocumentAction` (as a reducer) to disable Save and Publish while
 * someone else holds the lock. Why the app's `src/admin/app.tsx` and not a
 * Strapi plugin: the server side already lives in the app's `src/index.ts`,
 * and a package that declares itself a Strapi plugin is loaded into every
 * Strapi app it is installed in; two lines in the file Strapi documents for
 * admin customisation are the smaller promise.
 *
 * Served as ESM (`dist/strapi-admin.mjs`), which Strapi's admin bundler
 * (Vite) takes as it is; React, the design system and Strapi's admin come
 * from the app.
 */
import { LiveList } from './list'
import { LivePanel, lockActions } from './edit'

export { staleText } from './edit'

/** What `bootstrap(app)` in `src/admin/app.tsx` receives, as far as this uses it. */
export interface StrapiAdminApp {
  getPlugin(name: string): {
    injectComponent?(view: string, zone: string, component: { name: string; Component: unknown }): void
    apis?: Record<string, unknown>
  } | undefined
}

export interface LiveAdmin {
  bootstrap(app: StrapiAdminApp): void
}

export function liveAdmin(): LiveAdmin {
  return {
    bootstrap(app) {
      const cm = app.getPlugin('content-manager')
      if (cm === undefined) return
      cm.injectComponent?.('listView', 'actions', { name: 'cms-realtime-list', Component: LiveList })
      const apis = cm.apis as { addEditViewSidePanel?(p: unknown): void; addDocumentAction?(p: unknown): void } | undefined
      apis?.addEditViewSidePanel?.([LivePanel])
      apis?.addDocumentAction?.(lockActions)
    },
  }
}
