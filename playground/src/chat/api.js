// Queries and mutations over HTTP (`POST /graphql`), with the token as a bearer header.
import { graphqlUrl } from "../shared/session.js";

/** A GraphQL error, or a request that never got an answer (`code` NETWORK). */
export class ApiError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/** Runs one operation; resolves with its `data`, rejects with the first error as an ApiError. */
export async function gql(token, query, variables = {}) {
  let response;
  try {
    response = await fetch(graphqlUrl(), {
      method: "POST",
      headers: {
        "content-type": "application/json",
        accept: "application/graphql-response+json, application/json;q=0.9",
        ...(token ? { authorization: `Bearer ${token}` } : {}),
      },
      body: JSON.stringify({ query, variables }),
    });
  } catch {
    throw new ApiError("NETWORK", "The server cannot be reached.");
  }
  let body;
  try {
    body = await response.json();
  } catch {
    throw new ApiError("NETWORK", `The server answered ${response.status} without a GraphQL body.`);
  }
  const first = body?.errors?.[0];
  if (first) throw new ApiError(first.extensions?.code || "INTERNAL", first.message);
  return body.data;
}
