/**
 * The Content Manager's list view, live: any change to the type (by anyone,
 * through any API) refetches the list the view shows, as its own refresh
 * would. The list is the Content Manager's RTK Query `getAllDocuments`, so
 * invalidating its tag is the view's own way to update: filters, sorting,
 * paging and the columns stay as the editor set them.
 *
 * Rendered in the list view's `actions` zone (`injectComponent('listView',
 * 'actions')`), so it also says whether the view is live.
 */
import { adminApi } from '@strapi/strapi/admin'
import { Flex, Typography, Button } from '@strapi/design-system'
import { createElement as h, useEffect, useRef, useState, type ReactElement } from 'react'
import { useDispatch } from 'react-redux'
import { useParams } from 'react-router-dom'
import { strapiTopic } from '../topics'
import { tags, useLive } from './live'

/** Changes within this long are one refetch (a bulk publish is one list load, not fifty). */
const COALESCE_MS = 150

export function LiveList(): ReactElement | null {
  const { slug } = useParams()
  const { rt, state } = useLive()
  const dispatch = useDispatch()
  const timer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined)
  /** The server refused the type's topic (not in `contentTypes`, or no read permission): this view is not live. */
  const [refused, setRefused] = useState(false)
  useEffect(() => {
    if (slug === undefined) return
    const topic = strapiTopic(slug)
    setRefused(false)
    const offError = rt.on('error', (e) => { if (e.topic === topic && e.code === 'forbidden') setRefused(true) })
    const refetch = (): void => {
      clearTimeout(timer.current)
      timer.current = setTimeout(() => dispatch(adminApi.util.invalidateTags([tags.list(slug)])), COALESCE_MS)
    }
    const offEvents = rt.subscribe(topic, refetch)
    // History could not cover a gap (a long outage): what changed is unknown, so refetch.
    const offResync = rt.on('resync', (t) => { if (t === topic) refetch() })
    return () => {
      clearTimeout(timer.current)
      offEvents()
      offResync()
      offError()
    }
  }, [slug, rt, dispatch])
  // Back from a loss of the channel: the list may be behind. (Not on the
  // first connect: the list has just been loaded.)
  const channel = useRef<'new' | 'live' | 'lost'>('new')
  useEffect(() => {
    const live = state === 'live' || state === 'fallback'
    if (!live) {
      if (channel.current === 'live') channel.current = 'lost'
    } else {
      if (channel.current === 'lost' && slug !== undefined) dispatch(adminApi.util.invalidateTags([tags.list(slug)]))
      channel.current = 'live'
    }
  }, [state, slug, dispatch])
  if (slug === undefined || refused) return null
  const live = state === 'live' || state === 'fallback'
  return h(Flex, { gap: 2, 'data-cms-realtime': 'list', 'data-state': state },
    h(Typography, { variant: 'pi', textColor: live ? 'success600' : 'neutral600' }, live ? '● Live' : state === 'connecting' ? '○ Connecting…' : '○ Not live'),
    live || state === 'connecting' ? null : h(Button, { variant: 'tertiary', size: 'S', onClick: () => window.location.reload() },
      'Refresh to update'))
}
