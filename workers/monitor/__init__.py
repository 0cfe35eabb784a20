"""`render monitor`: a web page and a JSON API over the farm's queue, from one process
(Starlette on uvicorn). `serve` checks where it may listen, `app` builds the routes,
`api` answers under /api/, `access` decides who may read and act; the page
(templates/, static/) is shipped in the package and reads the same API."""
