import{u as g,s as f,a as y,g as x,b as j,t as T,e as m,c as k}from"./session-Coi4LuRN.js";import{c as v,j as e,r as i,a as S,G as w,b as C,g as I,p as U}from"./graphiql-vendor-B-GRMJXa.js";/* empty css                   */import"./graphql-ws-wkOhMJXj.js";import"./preload-helper-BXl3LOEh.js";const N=`# Welcome to the Tidings playground.
#
# Paste a token above, or sign in on the chat page:
# both pages share it. It goes out as "Authorization:
# Bearer" on HTTP and in connection_init on WebSocket.
# Make one:  tidings token --user alice
#
# Ctrl-Enter runs an operation; subscriptions stream
# until you stop them. The first icon on the left
# opens the schema's docs.

query Me {
  me { id username role points }
  rooms { id title memberCount }
}

mutation Hello {
  joinRoom(roomId: "lobby") { id memberCount }
  sendMessage(roomId: "lobby", body: "hello") {
    id
    body
  }
}

subscription Lobby {
  messageAdded(roomId: "lobby") {
    id
    body
    sender { username }
  }
}
`,b="tidings.playground.transport";function E(){try{return window.localStorage.getItem(b)==="sse"?"sse":"ws"}catch{return"ws"}}function A({query:s,operationName:t}){try{return I(U(s),t||void 0)?.operation==="subscription"}catch{return!1}}function P(s,t){const a=C({url:j(),headers:t?{Authorization:`Bearer ${t}`}:{},retryAttempts:0});return(n,d)=>A(n)?a.iterate(n):s(n,d)}function F({transport:s,onChange:t}){const a=i.useId();return e.jsxs("div",{className:"tp-transport",children:[e.jsx("label",{htmlFor:a,children:"Subscriptions over"}),e.jsxs("select",{id:a,"data-testid":"transport-select",value:s,onChange:n=>t(n.target.value),children:[e.jsx("option",{value:"ws",children:"WebSocket"}),e.jsx("option",{value:"sse",children:"Server-Sent Events"})]})]})}function R({token:s,fromUrl:t,onApply:a,transport:n,onTransport:d}){const[l,u]=i.useState(s),p=i.useId(),r=T(s);i.useEffect(()=>u(s),[s]);let c="Anonymous: the leaderboard and public channels only";s&&!r?c="That does not look like a JWT":r&&(c=`Signed in as ${r.name||r.sub||"?"} (${r.role||"user"}), ${m(r)}`,t&&(c+=" · from the URL, not saved"));const o=r&&m(r)==="expired";return e.jsxs("header",{className:"tp-bar",children:[e.jsxs("a",{className:"tp-brand",href:"/",children:[e.jsx("span",{className:"tp-logo","aria-hidden":"true",children:"T"}),"Tidings"]}),e.jsxs("nav",{className:"tp-nav","aria-label":"Pages",children:[e.jsx("a",{href:"/",children:"Chat"}),e.jsx("a",{href:"/playground","aria-current":"page",children:"Playground"})]}),e.jsxs("form",{className:"tp-token",onSubmit:h=>{h.preventDefault(),a(l.trim())},children:[e.jsx("label",{htmlFor:p,children:"Token"}),e.jsx("input",{id:p,"data-testid":"token-input",type:"password",autoComplete:"off",spellCheck:!1,placeholder:"Paste a JWT",value:l,onChange:h=>u(h.target.value)}),e.jsx("button",{type:"submit","data-testid":"token-apply",children:"Use token"}),s?e.jsx("button",{type:"button",className:"tp-secondary",onClick:()=>a(""),children:"Sign out"}):null]}),e.jsx(F,{transport:n,onChange:d}),e.jsx("p",{className:o?"tp-who tp-warn":"tp-who","data-testid":"token-status","aria-live":"polite",children:c})]})}function B(){const s=g(),[t,a]=i.useState(s||f()),[n,d]=i.useState(!!s),[l,u]=i.useState(E()),p=i.useMemo(()=>{const o=S({url:x(),subscriptionUrl:y(),headers:t?{Authorization:`Bearer ${t}`}:{},wsConnectionParams:t?{authToken:t}:{},enableIncrementalDelivery:!1});return l==="sse"?P(o,t):o},[t,l]),r=o=>{u(o);try{window.localStorage.setItem(b,o)}catch{}},c=o=>{a(o),d(!1),k(o)};return e.jsxs("div",{className:"tp-app",children:[e.jsx(R,{token:t,fromUrl:n,onApply:c,transport:l,onTransport:r}),e.jsx("main",{className:"tp-ide","aria-label":"GraphiQL",children:e.jsx(w,{fetcher:p,defaultQuery:N})})]})}v.createRoot(document.getElementById("graphiql-root")).render(e.jsx(B,{}));
