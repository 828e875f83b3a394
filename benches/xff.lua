-- wrk's script for the random cases of benches/caddy_compare.sh and caddy_profile.sh:
-- a random client address per request, sent as X-Forwarded-For. XFF_MODE=banned picks
-- one of the XFF_N addresses the benches import (10.x.y.z, in order), else a public
-- address outside 10/8 and 127/8.
local mode = os.getenv("XFF_MODE")
local n = tonumber(os.getenv("XFF_N"))
local floor, random = math.floor, math.random
local counter = 0
function init(args)
    counter = counter + 1
    math.randomseed(os.time() * 1000 + counter + floor(os.clock() * 1e6))
end
function request()
    local ip
    if mode == "banned" then
        local i = random(0, n - 1)
        ip = "10." .. (floor(i / 65536) % 256) .. "." .. (floor(i / 256) % 256) .. "." .. (i % 256)
    else
        local a = random(11, 223)
        if a == 127 then a = 128 end
        ip = a .. "." .. random(0, 255) .. "." .. random(0, 255) .. "." .. random(1, 254)
    end
    return wrk.format(nil, nil, { ["X-Forwarded-For"] = ip })
end
