import{u as m,s as h,a as b,g as f,t as g,e as p,b as y}from"./session-BU-YXF9l.js";import{c as x,j as e,r as n,a as j,G as k}from"./graphiql-vendor-CXZaNPbc.js";import"./graphql-ws-wkOhMJXj.js";import"./preload-helper-BXl3LOEh.js";const T=`# Welcome to the Tidings playground.
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
`;function U({token:s,fromUrl:a,onApply:r}){const[i,l]=n.useState(s),d=n.useId(),t=g(s);n.useEffect(()=>l(s),[s]);let o="Anonymous: the leaderboard and public channels only";s&&!t?o="That does not look like a JWT":t&&(o=`Signed in as ${t.name||t.sub||"?"} (${t.role||"user"}), ${p(t)}`,a&&(o+=" · from the URL, not saved"));const u=t&&p(t)==="expired";return e.jsxs("header",{className:"tp-bar",children:[e.jsxs("a",{className:"tp-brand",href:"/",children:[e.jsx("span",{className:"tp-logo","aria-hidden":"true",children:"T"}),"Tidings"]}),e.jsxs("nav",{className:"tp-nav","aria-label":"Pages",children:[e.jsx("a",{href:"/",children:"Chat"}),e.jsx("a",{href:"/playground","aria-current":"page",children:"Playground"})]}),e.jsxs("form",{className:"tp-token",onSubmit:c=>{c.preventDefault(),r(i.trim())},children:[e.jsx("label",{htmlFor:d,children:"Token"}),e.jsx("input",{id:d,"data-testid":"token-input",type:"password",autoComplete:"off",spellCheck:!1,placeholder:"Paste a JWT",value:i,onChange:c=>l(c.target.value)}),e.jsx("button",{type:"submit","data-testid":"token-apply",children:"Use token"}),s?e.jsx("button",{type:"button",className:"tp-secondary",onClick:()=>r(""),children:"Sign out"}):null]}),e.jsx("p",{className:u?"tp-who tp-warn":"tp-who","data-testid":"token-status","aria-live":"polite",children:o})]})}function v(){const s=m(),[a,r]=n.useState(s||h()),[i,l]=n.useState(!!s),d=n.useMemo(()=>j({url:f(),subscriptionUrl:b(),headers:a?{Authorization:`Bearer ${a}`}:{},wsConnectionParams:a?{authToken:a}:{},enableIncrementalDelivery:!1}),[a]),t=o=>{r(o),l(!1),y(o)};return e.jsxs("div",{className:"tp-app",children:[e.jsx(U,{token:a,fromUrl:i,onApply:t}),e.jsx("main",{className:"tp-ide","aria-label":"GraphiQL",children:e.jsx(k,{fetcher:d,defaultQuery:T})})]})}x.createRoot(document.getElementById("graphiql-root")).render(e.jsx(v,{}));
