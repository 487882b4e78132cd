//! The description as a tree: names resolved to devices and host bridges,
//! each device below a parent its type may sit under, no cycles. What the
//! description says, checked; nothing is numbered or placed yet.

use super::schema::{parse_link_spec, DescFile, Kind};
use super::Ctx;
use crate::error::Result;
use crate::model::LinkState;
use std::collections::HashMap;

/// One `[[device]]`, resolved.
pub(super) struct Node {
    /// Line of its `[[device]]` header.
    pub line: usize,
    pub kind: Kind,
    /// The device above it; `None` on a host bridge's root bus.
    pub parent: Option<usize>,
    /// Its host bridge (index into `[[host_bridge]]`).
    pub hb: usize,
    /// For a virtual function, its physical function.
    pub physfn: Option<usize>,
    /// `link` and `max_link` as written.
    pub link: Option<LinkState>,
    pub max_link: Option<LinkState>,
}

/// The devices of a description, indexed as in the file.
pub(super) struct Tree {
    pub nodes: Vec<Node>,
    /// Children of each device, in declaration order.
    pub children: Vec<Vec<usize>>,
    /// Devices on each host bridge's root bus, in declaration order.
    pub roots: Vec<Vec<usize>>,
}

/// What a name stands for: host bridges and devices share one namespace.
#[derive(Clone, Copy)]
enum Named {
    HostBridge(usize),
    Device(usize),
}

impl Tree {
    /// Resolve and check the description's names, types and parents.
    pub fn resolve(file: &DescFile, ctx: &Ctx) -> Result<Tree> {
        let mut names: HashMap<&str, (Named, usize)> = HashMap::new(); // name -> (what, line)
        let hbs = file
            .host_bridges
            .iter()
            .enumerate()
            .map(|(i, hb)| (&hb.get_ref().name, hb.span(), Named::HostBridge(i)));
        let devs = file
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| (&d.get_ref().name, d.span(), Named::Device(i)));
        for (name, span, what) in hbs.chain(devs) {
            let line = ctx.line(span.start);
            if let Some((_, l)) = names.insert(name, (what, line)) {
                return Err(ctx.err(
                    Some(line),
                    format!("name '{name}' is already used on line {l}"),
                ));
            }
        }

        let mut nodes: Vec<Node> = Vec::with_capacity(file.devices.len());
        for sd in &file.devices {
            let d = sd.get_ref();
            let line = ctx.line(sd.span().start);
            let kind = Kind::parse(&d.kind)
                .map_err(|e| ctx.err(Some(line), format!("device '{}': {e}", d.name)))?;
            let physfn = match &d.physfn {
                None => None,
                Some(pf) => match names.get(pf.as_str()) {
                    Some((Named::Device(p), _)) => Some(*p),
                    Some((Named::HostBridge(_), _)) => {
                        return Err(ctx.err(
                            Some(line),
                            format!(
                                "device '{}': physfn '{pf}' is a host bridge; physfn names the device whose virtual function this is",
                                d.name
                            ),
                        ))
                    }
                    None => {
                        return Err(ctx.err(
                            Some(line),
                            format!("device '{}': physfn '{pf}' is not a device of this file", d.name),
                        ))
                    }
                },
            };
            // A virtual function sits where its physical function does.
            let parent_name = match (&d.parent, physfn) {
                (Some(p), _) => p.as_str(),
                // (What a physical function may be is the builder's rule, for
                // every source; here it only tells where the function sits.)
                (None, Some(pf)) if pf == nodes.len() => {
                    return Err(ctx.err(
                        Some(line),
                        format!(
                            "device '{}' is its own physfn, so it has no parent to sit below",
                            d.name
                        ),
                    ))
                }
                (None, Some(pf)) => match &file.devices[pf].get_ref().parent {
                    Some(p) => p.as_str(),
                    None => {
                        return Err(ctx.err(
                            Some(line),
                            format!(
                                "device '{}': its physfn '{}' has no parent",
                                d.name,
                                file.devices[pf].get_ref().name
                            ),
                        ))
                    }
                },
                (None, None) => {
                    return Err(ctx.err(Some(line), format!("device '{}' has no parent", d.name)))
                }
            };
            let (parent, hb) = match names.get(parent_name) {
                Some((Named::HostBridge(hb), _)) => (None, *hb),
                Some((Named::Device(p), _)) => (Some(*p), usize::MAX),
                None => {
                    return Err(ctx.err(
                        Some(line),
                        format!(
                            "device '{}' names parent '{parent_name}', which is not defined (a dangling port)",
                            d.name
                        ),
                    ))
                }
            };
            let link_of = |field: &str, v: &Option<String>| -> Result<Option<LinkState>> {
                match v {
                    Some(s) => parse_link_spec(s).map(Some).ok_or_else(|| {
                        ctx.err(
                            Some(line),
                            format!(
                                "device '{}': {field} '{s}' is not a link like gen4x16",
                                d.name
                            ),
                        )
                    }),
                    None => Ok(None),
                }
            };
            nodes.push(Node {
                line,
                kind,
                parent,
                hb,
                physfn,
                link: link_of("link", &d.link)?,
                max_link: link_of("max_link", &d.max_link)?,
            });
        }

        check_cycles(file, &nodes, ctx)?;
        check_parent_kinds(file, &nodes, ctx)?;

        // Host bridge of every device: the one at the top of its chain.
        for i in 0..nodes.len() {
            let mut cur = i;
            while let Some(p) = nodes[cur].parent {
                cur = p;
            }
            nodes[i].hb = nodes[cur].hb;
        }
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        let mut roots: Vec<Vec<usize>> = vec![Vec::new(); file.host_bridges.len()];
        for (i, n) in nodes.iter().enumerate() {
            match n.parent {
                Some(p) => children[p].push(i),
                None => roots[n.hb].push(i),
            }
        }
        Ok(Tree {
            nodes,
            children,
            roots,
        })
    }

    /// Every device, depth first from each host bridge's root bus.
    pub fn dfs_order(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut stack: Vec<usize> = Vec::new();
        for r in &self.roots {
            stack.extend(r.iter().rev());
            while let Some(i) = stack.pop() {
                out.push(i);
                stack.extend(self.children[i].iter().rev());
            }
        }
        out
    }
}

fn check_cycles(file: &DescFile, nodes: &[Node], ctx: &Ctx) -> Result<()> {
    for (i, _) in nodes.iter().enumerate() {
        let mut seen = vec![i];
        let mut cur = nodes[i].parent;
        while let Some(p) = cur {
            if let Some(pos) = seen.iter().position(|&s| s == p) {
                let mut cyc: Vec<&str> = seen[pos..]
                    .iter()
                    .map(|&s| file.devices[s].get_ref().name.as_str())
                    .collect();
                cyc.push(&file.devices[p].get_ref().name);
                return Err(ctx.err(
                    Some(nodes[p].line),
                    format!(
                        "devices form a cycle through their parents: {}",
                        cyc.join(" -> ")
                    ),
                ));
            }
            seen.push(p);
            cur = nodes[p].parent;
        }
    }
    Ok(())
}

fn check_parent_kinds(file: &DescFile, nodes: &[Node], ctx: &Ctx) -> Result<()> {
    for (i, n) in nodes.iter().enumerate() {
        let d = file.devices[i].get_ref();
        let pk = n.parent.map(|p| nodes[p].kind);
        if !n.kind.allowed_parents().contains(&pk) {
            let pdesc = match pk {
                None => "a host bridge".to_string(),
                Some(k) => format!("a {}", k.name()),
            };
            let want: Vec<String> = n
                .kind
                .allowed_parents()
                .iter()
                .map(|k| {
                    k.map(|k| k.name().to_string())
                        .unwrap_or_else(|| "a host bridge".into())
                })
                .collect();
            let hint = if n.kind == Kind::Endpoint && pk.is_none() {
                " (a device directly on a root bus is an rc_endpoint)"
            } else {
                ""
            };
            return Err(ctx.err(
                Some(n.line),
                format!(
                    "device '{}' ({}) cannot sit below {pdesc} '{}'; it needs {}{hint}",
                    d.name,
                    n.kind.name(),
                    match n.parent {
                        Some(p) => &file.devices[p].get_ref().name,
                        None => &file.host_bridges[n.hb].get_ref().name,
                    },
                    want.join(" or ")
                ),
            ));
        }
    }
    Ok(())
}
