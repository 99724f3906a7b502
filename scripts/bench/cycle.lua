-- Cycles through N distinct URLs <prefix><i> (i = 0 .. N-1), each thread starting at its own
-- offset, so that the requests in flight at any moment almost never share a key (a proxy that
-- coalesces identical lookups then still does one lookup per request).
-- Usage: wrk -s cycle.lua URL -- PREFIX N THREADS
local thread_count = 0

function setup(thread)
    thread_count = thread_count + 1
    thread:set("tid", thread_count)
end

function init(args)
    prefix = args[1] or "/2k/r?i="
    n = tonumber(args[2] or "1000")
    local threads = tonumber(args[3] or "1")
    i = math.floor((tid - 1) * n / threads) % n
end

function request()
    local url = prefix .. i
    i = (i + 1) % n
    return wrk.format(nil, url)
end
