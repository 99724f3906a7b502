-- Every request gets its own URL: <path>?bench=<nonce>-<thread>-<counter>, so that every
-- request is a cache miss. The nonce (second script argument) differs per wrk invocation, so
-- the warm-up does not pre-fill the measured URLs.
-- Usage: wrk -s unique.lua URL -- PATH NONCE
local thread_count = 0

function setup(thread)
    thread_count = thread_count + 1
    thread:set("tid", thread_count)
end

function init(args)
    path = args[1] or "/2k/m"
    nonce = args[2] or "run"
    counter = 0
end

function request()
    counter = counter + 1
    return wrk.format(nil, path .. "?bench=" .. nonce .. "-" .. tid .. "-" .. counter)
end
