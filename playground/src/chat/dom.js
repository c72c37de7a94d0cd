// Small DOM helpers: every text goes in through textContent, never as HTML.

/** `h("li", { class: "x", "data-id": 1 }, "text", child)` */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (id) => document.getElementById(id);

/** A stable colour per name, dark enough for white initials. */
export function avatarColor(name) {
  let hash = 0;
  for (const c of name) hash = (hash * 31 + c.codePointAt(0)) >>> 0;
  return `hsl(${hash % 360} 55% 38%)`;
}

export function avatar(name, size = "") {
  const initial = (name || "?").slice(0, 1).toUpperCase();
  return h(
    "span",
    { class: `avatar ${size}`.trim(), "aria-hidden": "true", style: `background:${avatarColor(name || "?")}` },
    initial,
  );
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export function timeTag(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return h("time", {}, "");
  return h(
    "time",
    { datetime: date.toISOString(), title: dateTimeFormat.format(date) },
    timeFormat.format(date),
  );
}

/** Message ids are decimal strings: compare them as numbers without losing precision. */
export function compareIds(a, b) {
  return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}

/** A message body as text nodes, with `@me` mentions marked. */
export function bodyNodes(text, myName) {
  if (!myName) return [text];
  const nodes = [];
  const pattern = /(^|[^\w@])@([A-Za-z0-9_.-]+)/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    const name = match[2].replace(/[.-]+$/, "");
    if (name.toLowerCase() !== myName.toLowerCase()) continue;
    const start = match.index + match[1].length;
    nodes.push(text.slice(last, start), h("mark", { class: "mention" }, `@${name}`));
    last = start + 1 + name.length;
  }
  nodes.push(text.slice(last));
  return nodes;
}
