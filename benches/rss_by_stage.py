"""Peak RSS while each stage of a nightly run ran: the samples of benches/rss_sample.sh split
at the "stage done" times of the run's log. Stages recorded at one moment (the per-user
stages, summed over user parts) share one row. usage: python3 benches/rss_by_stage.py NAME"""
import re,sys,datetime
name=sys.argv[1]
log=re.sub(r'\x1b\[[0-9;]*m','',open(f'/tmp/m_{name}.log').read())
done=[]
for m in re.finditer(r'^(\S+)Z .*stage done stage="([a-z ]+)" seconds=([0-9.]+)',log,re.M):
    t=datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp()
    done.append((t,m.group(2),float(m.group(3))))
samples=[]
for line in open(f'/tmp/m_{name}.rss'):
    f=line.split()
    if len(f)>=2 and f[1].isdigit(): samples.append((int(f[0]),int(f[1])))
# stages recorded together (score/limits/suggest/write parts) share one "done" time: the
# per-part loop; report its peak once under their joint name
groups=[]
for t,stage,sec in done:
    if groups and abs(groups[-1][0]-t)<1.0: groups[-1][1].append(stage); groups[-1][2].append(sec)
    else: groups.append([t,[stage],[sec]])
prev=0
for t,stages,secs in groups:
    peak=max([r for s,r in samples if prev<=s<=t+0.5] or [0])
    print(f"{'+'.join(stages):40s} {' '.join(f'{x:.1f}' for x in secs):28s} peak {peak/1048576:.2f} GiB")
    prev=t
peak=max([r for s,r in samples if s>prev] or [0])
print(f"{'after the last stage':40s} {'':28s} peak {peak/1048576:.2f} GiB")
