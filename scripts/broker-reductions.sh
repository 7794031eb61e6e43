#!/usr/bin/env bash
# Where the broker spends its work between two marks: Erlang reductions per process
# group (the quorum queues' Raft servers by queue, channels, readers, writers, the WAL,
# ...), as a share of the total and per request. Reductions are the VM's own unit of
# work, not seconds, but the split says which part of RabbitMQ a workload loads.
#
#   scripts/broker-reductions.sh mark                 # remember every process's count
#   scripts/broker-reductions.sh settle               # wait until its channels are idle again
#   scripts/broker-reductions.sh report N [LABEL]     # top groups since the mark, per N
#
# The e2e bench calls them around each timed HTTP run when E2E_BROKER_PROFILE=1: a
# report as the run's work is done, and another once its channels are idle again.
# Needs rabbitmqctl (run as a user that may talk to the node: root or rabbitmq).
set -euo pipefail

cmd=${1:?usage: $0 mark | settle | report N [LABEL]}

case "$cmd" in
mark)
    rabbitmqctl -q eval '
        Snap = [{P, R} || P <- erlang:processes(),
                          {reductions, R} <- [erlang:process_info(P, reductions)]],
        persistent_term:put(sca_reductions_mark, maps:from_list(Snap)),
        ok.' >/dev/null
    ;;
settle)
    # Waits (at most 120 s) until the broker's channels are idle again: under 50,000
    # reductions in a 0.5 s tick, summed over the channel processes; prints how long
    # that took. Acks it could not keep up with (held back by flow control in the
    # client's socket) run on after a load ends, and count.
    rabbitmqctl -q eval '
        IsChannel = fun(P) ->
            case erlang:process_info(P, dictionary) of
                {dictionary, D} ->
                    case proplists:get_value(process_name, D) of
                        {rabbit_channel, _} -> true;
                        _ -> false
                    end;
                _ -> false
            end
        end,
        Channels = fun() -> lists:sum([R || P <- erlang:processes(), IsChannel(P),
                                           {reductions, R} <- [erlang:process_info(P, reductions)]]) end,
        Start = erlang:monotonic_time(millisecond),
        Loop = fun L(Prev) ->
            timer:sleep(500),
            Now = Channels(),
            Ms = erlang:monotonic_time(millisecond) - Start,
            if Now - Prev < 50000; Ms > 120000 -> Ms;
               true -> L(Now)
            end
        end,
        Ms = Loop(Channels()),
        io:format("broker channels idle again after ~.1f s~n", [Ms / 1000]),
        ok.' | grep -v '^ok$'
    ;;
report)
    n=${2:?report needs the request count}
    label=${3:-}
    # One group per process: a registered name (a quorum queue's Raft server is
    # registered under its queue's name), else the module of its process name (channels,
    # readers, writers), else its initial call.
    rabbitmqctl -q eval "
        Mark = persistent_term:get(sca_reductions_mark, #{}),
        Group = fun(P) ->
            case erlang:process_info(P, [registered_name, dictionary, initial_call]) of
                undefined -> dead;
                [{registered_name, N}, {dictionary, D}, {initial_call, IC}] ->
                    case N of
                        [] ->
                            case proplists:get_value(process_name, D) of
                                undefined -> proplists:get_value('\$initial_call', D, IC);
                                PN when is_tuple(PN) -> element(1, PN);
                                PN -> PN
                            end;
                        _ -> N
                    end
            end
        end,
        Deltas = [{Group(P), R - maps:get(P, Mark, 0)}
                  || P <- erlang:processes(), P =/= self(),
                     {reductions, R} <- [erlang:process_info(P, reductions)]],
        Sum = lists:foldl(fun({G, D}, Acc) -> maps:update_with(G, fun(V) -> V + D end, D, Acc) end,
                          #{}, Deltas),
        Total = lists:sum(maps:values(Sum)),
        Top = lists:sublist(lists:reverse(lists:keysort(2, maps:to_list(Sum))), 12),
        io:format(\"broker reductions ~s: ~b per request over ~b~n\", [\"$label\", Total div max(1, $n), $n]),
        [io:format(\"  ~6.1f%  ~8b/req  ~p~n\", [100 * D / max(1, Total), D div max(1, $n), G]) || {G, D} <- Top],
        Backlog = lists:foldl(
            fun(P, Acc) ->
                case erlang:process_info(P, message_queue_len) of
                    {message_queue_len, L} when L > 0 ->
                        maps:update_with(Group(P), fun(V) -> V + L end, L, Acc);
                    _ -> Acc
                end
            end, #{}, erlang:processes() -- [self()]),
        io:format(\"  messages still queued in mailboxes: ~p~n\", [maps:to_list(Backlog)]),
        ok." | grep -v '^ok$'
    ;;
*)
    echo "usage: $0 mark | settle | report N [LABEL]" >&2
    exit 2
    ;;
esac
