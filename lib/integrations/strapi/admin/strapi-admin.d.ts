/**
 * The few parts of Strapi's admin this entry uses, typed here so neither
 * `@strapi/strapi` nor `react-redux` is a dependency of cms-realtime. At
 * build time Strapi's admin bundler (Vite) resolves them to the admin's own
 * copies, the ones its React tree is rendered with.
 */
declare module '@strapi/strapi/admin' {
  export interface AdminUser { id?: number | string; firstname?: string | null; lastname?: string | null; username?: string | null; email?: string }
  export function useAuth<T>(consumer: string, selector: (auth: { token: string | null; user?: AdminUser }) => T): T
  /** Strapi's RTK Query api (`reducerPath: 'adminApi'`), which the Content Manager's queries live in. */
  export const adminApi: { util: { invalidateTags(tags: Array<{ type: string; id: string }>): { type: string } } }
}

declare module 'react-redux' {
  export function useDispatch(): (action: { type: string }) => unknown
}

declare module 'react-router-dom' {
  export function useParams(): Record<string, string | undefined>
}

declare module '@strapi/design-system' {
  import type { ComponentType, ReactNode } from 'react'
  type Props = { [prop: string]: unknown; children?: ReactNode }
  export const Box: ComponentType<Props>
  export const Flex: ComponentType<Props>
  export const Typography: ComponentType<Props>
  export const Button: ComponentType<Props>
  export const Avatar: { Item: ComponentType<Props>; Group: ComponentType<Props> }
}
