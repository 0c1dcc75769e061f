"""The mesh gateway's I/O: the proxy and its two data paths (:mod:`.proxy`, :mod:`.splice`),
the watches on the local agent (:mod:`.watch`), the catalog registration
(:mod:`.registration`), the admin/metrics HTTP server (:mod:`.admin`) and the process that
ties them together (:mod:`.main`). The pure parts they drive live one level up
(``server.gateway.{clienthello,routes,tables,config,stats}``)."""
