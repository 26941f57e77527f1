"""Diagnostic numpy port of model.py as of generator version 2 (no torch): W4A8 + KV forward with switchable
QServe rounding points (O: out16 norm16 asum16 silu16 kv16 res16 attn16). Used to locate the engine/generator
gap before PyTorch was available here (docs/checkpoints.md). Superseded: it does not have version 3's RoPE,
decode-kernel attention, final-norm and logits rounding or its correctly rounded exp/sqrt/cos/sin, so it does
not reproduce the v3 reference; use gen_reference.py itself.
Usage: python3 np_emulate.py pc|g 4|8 out16,norm16,asum16,silu16,kv16 TAG  -> /tmp/i3/ref_TAG, a fake
QSERVE_REFERENCE_DIR whose logits are this port's, for build/test_model --gtest_filter="*ZooCheckpoint*"."""
# numpy port of tools/qserve_reference/model.py (W4A8 + KV) with switchable QServe rounding points.
import json, pickle, zipfile, struct, sys, numpy as np
REF='/work/main/.carry/qserve_reference_out'
f16=np.float16; f32=np.float32
def load_st(path):
    b=open(path,'rb').read(); n=struct.unpack('<Q',b[:8])[0]; h=json.loads(b[8:8+n]); out={}
    dt={'F16':np.float16,'F32':np.float32,'I32':np.int32,'I8':np.int8,'U8':np.uint8,'I64':np.int64}
    for k,v in h.items():
        if k=='__metadata__': continue
        s,e=v['data_offsets']; out[k]=np.frombuffer(b[8+n+s:8+n+e],dtype=dt[v['dtype']]).reshape(v['shape'])
    return out, h.get('__metadata__',{})
def load_bin(path):
    z=zipfile.ZipFile(path); names=z.namelist(); pre=names[0].split('/')[0]
    class S:
        def __init__(s,dt): s.dt=dt
    sto={'HalfStorage':np.float16,'FloatStorage':np.float32,'CharStorage':np.int8,'ByteStorage':np.uint8,'IntStorage':np.int32,'LongStorage':np.int64}
    def rebuild(storage, off, size, stride, *a):
        arr=storage
        if len(size)==0: return arr[off]
        return np.lib.stride_tricks.as_strided(arr[off:], shape=size, strides=[x*arr.itemsize for x in stride]).copy()
    class U(pickle.Unpickler):
        def find_class(s, mod, name):
            if name=='_rebuild_tensor_v2': return rebuild
            if name in sto: return sto[name]
            if name=='OrderedDict': import collections; return collections.OrderedDict
            raise Exception((mod,name))
        def persistent_load(s, pid):
            _, dt, key, loc, n = pid
            return np.frombuffer(z.read(f'{pre}/data/{key}'), dtype=dt)
    return U(z.open(f'{pre}/data.pkl')).load()
# --- qformats ports
def unpack_qweight(packed):
    n_,kh=packed.shape; k_=2*kh; flat=packed.reshape(-1).view(np.uint8).astype(np.int64); L=np.arange(flat.size)
    a=L//(16*k_); u=L%(16*k_); e=u//512; v=u%512; d=v//64; g=(v//16)%4; f=(v//8)%2; c=(v//4)%2; h=v%4
    kk=32*e+16*f+4*g+h; nlo=32*a+8*c+d; out=np.full((n_,k_),-1,np.int64); out[nlo,kk]=flat&15; out[nlo+16,kk]=flat>>4; return out
def unperm(st):
    g,n=st.shape; return st.reshape(g,n//32,8,4).transpose(0,1,3,2).reshape(g,n).T
def g128w8(codes,s2s,s2z):
    n,k=codes.shape; s2=unperm(s2s).view(np.uint8).astype(np.int64); zb=unperm(s2z).view(np.uint8).astype(np.int64)
    b=(codes.reshape(n,k//128,128)*s2[:,:,None]+zb[:,:,None])%256; w8=np.where(b>=128,b-256,b); return w8.reshape(n,k)
# --- block reduce (QServe §5.5): per-thread sequential partials over i % B, warp butterflies.
def block_sum(x, B):
    # x [..., K] fp32 -> [...]
    K=x.shape[-1]; p=np.zeros(x.shape[:-1]+(B,),f32)
    for i in range(K): p[...,i%B]=(p[...,i%B]+x[...,i]).astype(f32)
    nw=(B+31)//32; p=np.concatenate([p,np.zeros(x.shape[:-1]+(nw*32-B,),f32)],-1).reshape(x.shape[:-1]+(nw,32))
    def bf(v):
        m=v.shape[-1]
        while m>1: m//=2; v=(v[...,:m]+v[...,m:2*m]).astype(f32)
        return v[...,0]
    t=bf(p); t=np.concatenate([t,np.zeros(x.shape[:-1]+(32-nw,),f32)],-1); return bf(t)
O=dict(out16=False, norm16=False, asum16=False, silu16=False, kv16=False, res16=False, attn16=False)
def quant_act(x, amax=None):
    if amax is None: amax=np.abs(x).max(-1)
    r=(f32(127)*(f32(1)/amax)).astype(f32)
    with np.errstate(all='ignore'):
        xq=np.clip(np.rint((x*r[...,None]).astype(f32)),-128,127); xq=np.nan_to_num(xq)
    sc=(amax*f32(1/127)).astype(f32).astype(f16).astype(f32)
    return xq, sc
class Lin:
    def __init__(s, mode, w, s1, sz=None): s.mode=mode; s.w=w.astype(np.float64).T.copy(); s.s1=s1.astype(f32); s.sz=None if sz is None else sz.astype(f32)
    def __call__(s, x, pre=None):
        # pre: (xq, a_scale, a_sum) from the fused norm
        if pre is None:
            xq,sc=quant_act(x); 
            asum=x.sum(-1,dtype=f32) if not O['asum16'] else block_sum(x,min(x.shape[-1],1024)).astype(f16).astype(f32)
        else: xq,sc,asum=pre
        acc=(xq.astype(np.float64)@s.w).astype(f32)
        if s.mode=='pc':
            t1=(acc*s.s1[None,:]).astype(f32); t2=(s.sz[None,:]*asum[:,None]).astype(f32)
            y=(sc[:,None].astype(np.float64)*t1-t2).astype(f32)   # fma
        else:
            y=(acc*(s.s1[None,:]*sc[:,None]).astype(f32)).astype(f32)
        if O['out16']: y=y.astype(f16).astype(f32)
        return y
def norm_quant(x, eps):
    # true RMSNorm, gamma = 1
    if O['norm16']:
        B=32*((min(x.shape[-1],1024)+31)//32)
        S2=block_sum((x*x).astype(f32),B); rho=(f32(1)/np.sqrt((S2/f32(x.shape[-1])).astype(f32)+f32(eps))).astype(f32)
        u=(x*rho[:,None]).astype(f32); v=u.astype(f16)
        amax=np.maximum(np.abs(v).max(-1).astype(f32), f32(np.float16(1e-6)))
        xq,sc=quant_act(u,amax)
        if O['asum16']:
            ts=np.zeros((x.shape[0],B),f16)
            for i in range(x.shape[-1]): ts[:,i%B]=(ts[:,i%B].astype(f32)+v[:,i].astype(f32)).astype(f16)
            asum=block_sum(ts.astype(f32),B).astype(f16).astype(f32)
        else: asum=u.sum(-1,dtype=f32)
        return xq,sc,asum
    var=(x*x).mean(-1,keepdims=True,dtype=f32); u=(x/np.sqrt(var+f32(eps))).astype(f32)
    xq,sc=quant_act(u); asum=u.sum(-1,dtype=f32)
    if O['asum16']: asum=block_sum(u,min(u.shape[-1],1024)).astype(f16).astype(f32)
    return xq,sc,asum
def quant_kv(x,bits):
    qmax=f32(15 if bits==4 else 255); mx=x.max(-1,keepdims=True); mn=x.min(-1,keepdims=True); rng=(mx-mn).astype(f32)
    s=(rng*f32(1/float(qmax))).astype(f16).astype(f32); z=((-qmax*mn).astype(f32)*(f32(1)/rng)).astype(f32).astype(f16).astype(f32)
    q=np.rint(np.fma(x,(f32(1)/s),z) if hasattr(np,'fma') else (x.astype(np.float64)*(f32(1)/s)+z).astype(f32)); q=np.clip(q,0,255)
    if bits==4:
        q=np.remainder(q,16); Z=(-(s*z)).astype(f16).astype(f32); xh=(q.astype(np.float64)*s+Z).astype(f16).astype(f32) if O['kv16'] else (q*s+Z).astype(f32)
    else:
        xh=(s*(q-z)).astype(f32)
        if O['kv16']: xh=xh.astype(f16).astype(f32)
    return xh
def forward(cfg, zoo, mode, ids, kvbits):
    H=cfg['hidden_size']; nh=cfg['num_attention_heads']; nkv=cfg['num_key_value_heads']; D=H//nh; L=cfg['num_hidden_layers']; eps=cfg['rms_norm_eps']
    th=cfg.get('rope_theta',10000.0)
    lin={}
    for i in range(L):
        for nm in ['self_attn.q_proj','self_attn.k_proj','self_attn.v_proj','self_attn.o_proj','mlp.gate_proj','mlp.up_proj','mlp.down_proj']:
            p=f'model.layers.{i}.{nm}'; codes=unpack_qweight(zoo[p+'.qweight'])
            if mode=='pc': lin[p]=Lin('pc',codes,zoo[p+'.s1_scales'],zoo[p+'.s1_szeros'])
            else: lin[p]=Lin('g',g128w8(codes,zoo[p+'.s2_scales'],zoo[p+'.s2_zeros']),zoo[p+'.s1_scales'])
    emb=zoo['model.embed_tokens.weight'].astype(f32); lm=zoo['lm_head.weight'].astype(f32)
    inv=(1.0/(th**(np.arange(0,D,2).astype(f32)/D))).astype(f32)
    T=len(ids); h=emb[ids]
    if O['res16']: h=h.astype(f16).astype(f32)
    pos=np.arange(T,dtype=f32); fr=(pos[:,None]*inv[None,:]).astype(f32); e=np.concatenate([fr,fr],-1); cos=np.cos(e).astype(f32); sin=np.sin(e).astype(f32)
    rot=lambda x: np.concatenate([-x[...,D//2:],x[...,:D//2]],-1)
    for i in range(L):
        Lf=lambda n: lin[f'model.layers.{i}.{n}']
        pre=norm_quant(h,eps)
        q=Lf('self_attn.q_proj')(None,pre).reshape(T,nh,D).transpose(1,0,2)
        k=Lf('self_attn.k_proj')(None,pre).reshape(T,nkv,D).transpose(1,0,2)
        v=Lf('self_attn.v_proj')(None,pre).reshape(T,nkv,D).transpose(1,0,2)
        q=(q*cos+rot(q)*sin).astype(f32); k=(k*cos+rot(k)*sin).astype(f32)
        if O['kv16']: k16=k.astype(f16).astype(f32); v16=v.astype(f16).astype(f32)
        else: k16,v16=k,v
        rep=nh//nkv; kr=np.repeat(k,rep,0); vr=np.repeat(v,rep,0)
        kh=np.repeat(quant_kv(k16,kvbits),rep,0); vh=np.repeat(quant_kv(v16,kvbits),rep,0)
        sc=(q@kh.transpose(0,2,1))*f32(1/np.sqrt(D)); own=(q*kr).sum(-1)*f32(1/np.sqrt(D))
        idx=np.arange(T); sc[:,idx,idx]=own; sc=np.where(np.tril(np.ones((T,T),bool)),sc,-np.inf)
        sc=sc-sc.max(-1,keepdims=True); p=np.exp(sc); p=(p/p.sum(-1,keepdims=True)).astype(f32)
        pown=p[:,idx,idx].copy(); p[:,idx,idx]=0
        a=(p@vh+pown[...,None]*vr).astype(f32).transpose(1,0,2).reshape(T,H)
        if O['attn16']: a=a.astype(f16).astype(f32)
        h=(h+Lf('self_attn.o_proj')(a)).astype(f32)
        if O['res16']: h=h.astype(f16).astype(f32)
        pre=norm_quant(h,eps)
        g=Lf('mlp.gate_proj')(None,pre); u=Lf('mlp.up_proj')(None,pre)
        if O['silu16']:
            s=(g/(f32(1)+np.exp(-g))).astype(f32).astype(f16).astype(f32); m=(s*u).astype(f32).astype(f16).astype(f32)
        else: m=(g/(1+np.exp(-g))*u).astype(f32)
        h=(h+Lf('mlp.down_proj')(m)).astype(f32)
        if O['res16']: h=h.astype(f16).astype(f32)
    var=(h*h).mean(-1,keepdims=True,dtype=f32); hn=(h/np.sqrt(var+f32(eps))).astype(f32)
    return hn@lm.T
def cmp(a,b):
    a=a.reshape(-1,a.shape[-1]).astype(np.float64); b=b.reshape(-1,b.shape[-1]).astype(np.float64)
    return (a.argmax(-1)==b.argmax(-1)).mean(), np.sqrt(((a-b)**2).sum()/(b**2).sum()), np.sqrt(((a[::64]-b[::64])**2).sum()/(b[::64]**2).sum())

if __name__ == "__main__":
    import sys as _s; emu = _s.modules[__name__]; import json,numpy as np,sys,os,struct
    mode=sys.argv[1]; kv=int(sys.argv[2]); opts=sys.argv[3].split(',') if len(sys.argv)>3 and sys.argv[3] else []
    for o in opts: emu.O[o]=True
    zdir={'pc':'w4a8-per-channel','g':'w4a8-g128'}[mode]
    z=emu.load_bin(emu.REF+f'/{zdir}/pytorch_model.bin'); cfg=json.load(open(emu.REF+f'/{zdir}/config.json'))
    rname=f"reference_logits_{'per-channel' if mode=='pc' else 'g128'}_w4a8kv{kv}.safetensors"
    r,meta=emu.load_st(emu.REF+'/'+rname)
    ids=r['input_ids']; out=np.stack([emu.forward(cfg,z,mode,ids[b].astype(np.int64),kv) for b in range(ids.shape[0])])
    print(mode,kv,opts,'vs generator: top1 %.4f rel %.4f pos0 %.4f'%emu.cmp(out,r['logits'].astype(np.float32)))
    tag=sys.argv[4] if len(sys.argv)>4 else None
    if tag:
        d=f'/tmp/i3/ref_{tag}'; os.makedirs(d,exist_ok=True)
        for zz in ['w4a8-per-channel','w4a8-g128']:
            if not os.path.exists(f'{d}/{zz}'): os.symlink(emu.REF+'/'+zz, f'{d}/{zz}')
        lg=out.astype(np.float16); hdr={'input_ids':{'dtype':'I32','shape':list(ids.shape),'data_offsets':[0,ids.nbytes]},'logits':{'dtype':'F16','shape':list(lg.shape),'data_offsets':[ids.nbytes,ids.nbytes+lg.nbytes]}}
        h=json.dumps(hdr).encode(); h+=b' '*((8-len(h)%8)%8)
        open(f'{d}/{rname}','wb').write(struct.pack('<Q',len(h))+h+ids.astype(np.int32).tobytes()+lg.tobytes())
        np.save(f'{d}/{mode}{kv}.npy',out)
