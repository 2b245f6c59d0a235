/** Topic names, shared by the server side and the admin bundle (which must not pull in server code). */

/** The topic of every document of `uid`, or of one. */
export function strapiTopic(uid: string, documentId?: string): string {
  return documentId === undefined ? `strapi:${uid}` : `strapi:${uid}:${documentId}`
}
