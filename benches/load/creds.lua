-- wrk script for benches/load.sh: one credential per request, read from a
-- file (one per line), taken in order and wrapping around at the end.
--   wrk ... -s creds.lua URL -- FILE [bearer|cookie]
-- Every request string is built once in init(), so request() costs one table
-- lookup. done() prints "wraps: N": how many times the list was exhausted
-- (a distinct-token row must report 0: each token used once).
-- Globals, not locals: done() reads `i` and `wraps` from each thread's Lua
-- state with thread:get(), which sees globals only.
reqs, n, i, wraps = {}, 0, 0, 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local file, kind = args[1], args[2] or "bearer"
  if not file then error("creds.lua: no credentials file") end
  for line in io.lines(file) do
    if #line > 0 then
      local h = {}
      if kind == "cookie" then
        h["Cookie"] = "sessionId=" .. line
      else
        h["Authorization"] = "Bearer " .. line
      end
      n = n + 1
      reqs[n] = wrk.format(nil, nil, h)
    end
  end
  if n == 0 then error("creds.lua: no credentials in " .. file) end
end

function request()
  i = i + 1
  if i > n then
    i = 1
    wraps = wraps + 1
  end
  return reqs[i]
end

function done(summary, latency, requests)
  local w, used = 0, 0
  for _, t in ipairs(threads) do
    w = w + (t:get("wraps") or 0)
    used = used + (t:get("i") or 0)
  end
  io.write(string.format("wraps: %d\n", w))
end
