//! The walk along successor lists that finds a ring's members, as a state machine: the
//! caller asks the peer [`MemberWalk::next_action`] names for its state (`GetState`) and feeds
//! the answer back. Two strategies:
//! - [`MemberWalk::leaping`] (the client's view): from one member's state, jump to the
//!   farthest successor that answers, collecting every successor list on the way; peers
//!   that do not answer are left out. Fast, and lenient: the view is a hint that a
//!   "wrong node" answer corrects.
//! - [`MemberWalk::strict`] (garbage collection's mark): visit every member one by one
//!   along successors; fail unless the walk comes back to its start, every member
//!   answers, and every predecessor named is on the walk: the mark must see every
//!   holder, or it deletes on incomplete knowledge.

use crate::id::Id;
use crate::proto::{NodeState, Peer};
use std::collections::BTreeMap;

/// Most nodes a walk will visit (bounds a walk of a broken or hostile ring).
pub const MAX_RING_WALK: usize = 10_000;

/// What the caller does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Ask this peer for its state; feed it to [`MemberWalk::answered`], or call
    /// [`MemberWalk::silent`] when it does not answer.
    Ask(Peer),
    /// Strict walks: back at the start; call [`MemberWalk::close`] with this node's own
    /// predecessor as it is now.
    Home,
    /// The members found, sorted by id.
    Done(Vec<Peer>),
    /// The walk cannot vouch for the membership (strict walks only).
    Failed(String),
}

#[derive(Clone, Debug)]
enum Mode {
    Leaping {
        /// The state the walk stands on.
        at: Option<NodeState>,
        /// Its successors still to try as the next stand, farthest first.
        candidates: Vec<Peer>,
    },
    Strict {
        cur: Peer,
        predecessors: Vec<Peer>,
        home: bool,
    },
}

/// One walk: see the module doc.
#[derive(Clone, Debug)]
pub struct MemberWalk {
    start: Id,
    members: BTreeMap<Id, Peer>,
    mode: Mode,
    steps: usize,
    outcome: Option<Next>,
}

impl MemberWalk {
    /// A leaping walk from `first`, the state of the member it starts at.
    pub fn leaping(first: NodeState) -> MemberWalk {
        let mut w = MemberWalk {
            start: first.me.id,
            members: BTreeMap::new(),
            mode: Mode::Leaping {
                at: None,
                candidates: Vec::new(),
            },
            steps: 0,
            outcome: None,
        };
        w.members.insert(first.me.id, first.me.clone());
        w.stand_on(first);
        w
    }

    /// A strict walk by `me` (a member), from its successor.
    pub fn strict(me: &Peer, successor: Peer) -> MemberWalk {
        let mut w = MemberWalk {
            start: me.id,
            members: BTreeMap::new(),
            mode: Mode::Strict {
                cur: successor,
                predecessors: Vec::new(),
                home: false,
            },
            steps: 0,
            outcome: None,
        };
        w.members.insert(me.id, me.clone());
        w.strict_step();
        w
    }

    /// Members found so far.
    pub fn members(&self) -> impl Iterator<Item = &Peer> {
        self.members.values()
    }

    /// What to do next.
    pub fn next_action(&self) -> Next {
        if let Some(o) = &self.outcome {
            return o.clone();
        }
        match &self.mode {
            Mode::Leaping { candidates, .. } => match candidates.first() {
                Some(p) => Next::Ask(p.clone()),
                None => self.done(),
            },
            Mode::Strict { home: true, .. } => Next::Home,
            Mode::Strict { cur, .. } => Next::Ask(cur.clone()),
        }
    }

    /// Ends a strict walk that came [`Next::Home`]: every predecessor named on the way,
    /// and `own_predecessor`, must be a member found.
    pub fn close(&mut self, own_predecessor: Option<Peer>) -> Next {
        if let Mode::Strict {
            predecessors,
            home: true,
            ..
        } = &mut self.mode
        {
            predecessors.extend(own_predecessor);
            let outsider = predecessors
                .iter()
                .find(|p| !self.members.contains_key(&p.id));
            self.outcome = Some(match outsider {
                Some(p) => Next::Failed(format!(
                    "{} is a predecessor but not on the successor walk",
                    p.addr
                )),
                None => self.done(),
            });
        }
        self.next_action()
    }

    /// The peer last asked answered with its state.
    pub fn answered(&mut self, st: NodeState) {
        if self.outcome.is_some() {
            return;
        }
        match &mut self.mode {
            Mode::Leaping { at, .. } => {
                if at.as_ref().is_some_and(|a| a.me.id == st.me.id) {
                    self.outcome = Some(self.done());
                } else {
                    self.stand_on(st);
                }
            }
            Mode::Strict {
                cur, predecessors, ..
            } => {
                self.members.insert(st.me.id, st.me.clone());
                if let Some(p) = st.predecessor {
                    predecessors.push(p);
                }
                let Some(next) = st.successors.first().cloned() else {
                    self.outcome = Some(Next::Failed(format!("{} has no successor", cur.addr)));
                    return;
                };
                if self.members.contains_key(&next.id) && next.id != self.start {
                    self.outcome = Some(Next::Failed(format!(
                        "the successor walk loops at {} without coming back",
                        next.addr
                    )));
                    return;
                }
                *cur = next;
                self.strict_step();
            }
        }
    }

    /// The peer last asked did not answer (`why`, for a strict walk's failure).
    pub fn silent(&mut self, why: String) {
        if self.outcome.is_some() {
            return;
        }
        match &mut self.mode {
            Mode::Leaping { candidates, .. } => {
                if !candidates.is_empty() {
                    let p = candidates.remove(0);
                    self.members.remove(&p.id);
                }
            }
            Mode::Strict { .. } => self.outcome = Some(Next::Failed(why)),
        }
    }

    fn done(&self) -> Next {
        Next::Done(self.members.values().cloned().collect())
    }

    /// Leaping: takes `st` as the new stand, its successors as members and candidates.
    fn stand_on(&mut self, st: NodeState) {
        if self.steps >= MAX_RING_WALK {
            self.outcome = Some(self.done());
            return;
        }
        self.steps += 1;
        for p in &st.successors {
            self.members.insert(p.id, p.clone());
        }
        // Jump to the farthest successor that answers, unless the list wrapped home.
        let wrapped = st.successors.iter().any(|p| p.id == self.start);
        if wrapped || self.members.len() >= MAX_RING_WALK {
            self.outcome = Some(self.done());
            return;
        }
        let far_first: Vec<Peer> = st.successors.iter().rev().cloned().collect();
        self.mode = Mode::Leaping {
            at: Some(st),
            candidates: far_first,
        };
    }

    /// Strict: stop at home, or fail past the bound.
    fn strict_step(&mut self) {
        let Mode::Strict { cur, home, .. } = &mut self.mode else {
            return;
        };
        if cur.id == self.start {
            *home = true;
        } else if self.steps >= MAX_RING_WALK {
            self.outcome = Some(Next::Failed("the successor walk did not close".into()));
        } else {
            self.steps += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::testing::{peer, state};

    /// A ring of `n` members 10, 20, ..., with successor lists of `len`.
    fn ring(n: u8, len: usize) -> Vec<NodeState> {
        (0..n)
            .map(|i| {
                let succ: Vec<u8> = (1..=len as u8).map(|k| ((i + k) % n + 1) * 10).collect();
                state((i + 1) * 10, Some(((i + n - 1) % n + 1) * 10), &succ)
            })
            .collect()
    }

    /// Drives `w` over `states`, the members in `dead` silent; also returns the
    /// addresses asked, in order.
    fn drive(mut w: MemberWalk, states: &[NodeState], dead: &[u8]) -> (Next, Vec<String>) {
        let mut asked = Vec::new();
        for _ in 0..1000 {
            match w.next_action() {
                Next::Ask(p) => {
                    asked.push(p.addr.clone());
                    if dead.contains(&(p.id.0[0])) {
                        w.silent(format!("{} silent", p.addr));
                    } else {
                        let st = states.iter().find(|s| s.me.id == p.id).expect("a member");
                        w.answered(st.clone());
                    }
                }
                Next::Home => {
                    let me = states.iter().find(|s| s.me.id == w.start).expect("home");
                    return (w.close(me.predecessor.clone()), asked);
                }
                other => return (other, asked),
            }
        }
        panic!("walk did not end");
    }

    fn addrs(n: Next) -> Vec<String> {
        match n {
            Next::Done(v) => v.into_iter().map(|p| p.addr).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_leaping_walk_finds_every_member_and_skips_the_silent() {
        let states = ring(12, 3);
        let all: Vec<String> = (1..=12).map(|i| format!("n{}", i * 10)).collect();
        let (found, asked) = drive(MemberWalk::leaping(states[0].clone()), &states, &[]);
        assert_eq!(addrs(found), all);
        // It leaps to the farthest successor: 12 members, 3 to a list, 4 stands.
        assert_eq!(asked, ["n40", "n70", "n100"]);
        // 40 is silent: the walk stands on 30 instead. 40 stays a member because 30's
        // list names it (a hint the client's "wrong node" answers correct).
        let (found, asked) = drive(MemberWalk::leaping(states[0].clone()), &states, &[40]);
        assert_eq!(addrs(found), all);
        assert_eq!(asked.iter().filter(|a| *a == "n40").count(), 1);
        assert_eq!(asked[..2], ["n40", "n30"]);
        // Silent and named by no list read after it: left out.
        let short = ring(4, 3);
        let mut lists = short.clone();
        lists[2].successors = vec![peer(10), peer(20)];
        let (found, _) = drive(MemberWalk::leaping(lists[0].clone()), &lists, &[40]);
        assert_eq!(addrs(found), ["n10", "n20", "n30"]);
    }

    #[test]
    fn a_strict_walk_sees_every_member_or_fails() {
        let states = ring(6, 2);
        let me = states[0].me.clone();
        let walk = || MemberWalk::strict(&me, states[0].successors[0].clone());
        assert_eq!(addrs(drive(walk(), &states, &[]).0).len(), 6);
        match drive(walk(), &states, &[30]).0 {
            Next::Failed(why) => assert_eq!(why, "n30 silent"),
            other => panic!("{other:?}"),
        }
        // A member whose predecessor the walk never met: a join in progress.
        let mut joining = states.clone();
        joining[2].predecessor = Some(peer(25));
        match drive(walk(), &joining, &[]).0 {
            Next::Failed(why) => assert!(why.contains("n25 is a predecessor"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A successor pointer that loops short of home.
        let mut looped = states.clone();
        looped[3].successors = vec![peer(30)];
        assert!(matches!(drive(walk(), &looped, &[]).0, Next::Failed(_)));
    }
}
